"""Scenario 3, balancing quality: four engines of different speeds, Poisson arrivals.

Engines: ITL 10, 15, 25 and 40 ms, TTFT 2 x ITL plus ITL/500 ms per prompt token,
max-num-seqs 8, no jitter, so a request's service time on each engine is known exactly.
The gateway pool allows 64 in flight per backend (the default), so where a request queues
is the balancer's decision. Workload: the same fixed-seed requests for every policy
(prompts log-normal around 300 tokens, outputs log-normal around 60 tokens, 8..200), at
60% and 90% of the pool's capacity (sum over engines of 8 / mean service time).

Policies: the gateway's least_outstanding, round_robin, random and speed_aware (the
default), each with the engines' /metrics queue gauges read every second (the gateway's
default `engines.endpoint_health.metrics_interval`); speed_aware also in a gateway that reads
them every 250 ms ("speed_aware /metrics 250 ms"); and an oracle: a client-side router that sends each request straight to the engine where
it would finish first, replaying each engine's FIFO batch scheduler from the exact service
times of what it sent (it knows each request's output length: clairvoyant), anchored on
the first tokens it observes.
"""

from __future__ import annotations

import asyncio
import heapq
import time
from dataclasses import dataclass, field
from typing import Any

from .. import loadgen, procs, workload
from ..context import Bench

ITLS_MS = (10, 15, 25, 40)
BATCH = 8
MODEL = "bal"
POLICIES = ("least_outstanding", "round_robin", "random", "speed_aware")
FAST = "speed_aware /metrics 250 ms"  # speed_aware with the engines' gauges read 4x as often
FAST_SCRAPE = "engines: {endpoint_health: {metrics_interval: 0.25}}\n"


@dataclass(frozen=True)
class Engine:
    target: loadgen.Target
    itl: float  # seconds
    ttft: float
    prefill: float  # seconds per prompt token
    batch: int = BATCH

    def service(self, prompt_tokens: int, output_tokens: int) -> float:
        return self.ttft + self.prefill * prompt_tokens + self.itl * (output_tokens - 1)

    def first_token(self, prompt_tokens: int) -> float:
        return self.ttft + self.prefill * prompt_tokens


def sim_args(itl_ms: float) -> list[str]:
    return ["--served-model-name", MODEL, "--max-num-seqs", str(BATCH), "--itl-ms", str(itl_ms),
            "--ttft-ms", str(2 * itl_ms), "--prefill-ms-per-token", str(itl_ms / 500), "--max-model-len", "16384"]


@dataclass
class _Flight:
    service: float
    first_after: float  # TTFT of this request on its engine, when not queued
    first_at: float | None = None


@dataclass
class Oracle:
    """Earliest-finish routing from an exact replay of each engine's FIFO scheduler."""

    engines: list[Engine]
    flights: list[dict[int, _Flight]] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.flights = [{} for _ in self.engines]

    def finish_time(self, i: int, now: float, service: float) -> float:
        e, fl = self.engines[i], self.flights[i]
        slots: list[float] = []
        pending: list[float] = []
        for f in fl.values():  # dicts keep dispatch order: FIFO
            if f.first_at is not None:
                slots.append(max(now, f.first_at - f.first_after + f.service))
            else:
                pending.append(f.service)
        slots = slots[: e.batch] + [now] * max(0, e.batch - len(slots))
        heapq.heapify(slots)
        for s in pending:
            heapq.heappush(slots, max(heapq.heappop(slots), now) + s)
        return max(heapq.heappop(slots), now) + service

    def choose(self, prompt: int, output: int) -> int:
        now = time.perf_counter()
        best = min(range(len(self.engines)),
                   key=lambda i: self.finish_time(i, now, self.engines[i].service(prompt, output)))
        return best

    def dispatched(self, i: int, rid: int, prompt: int, output: int) -> None:
        e = self.engines[i]
        self.flights[i][rid] = _Flight(e.service(prompt, output), e.first_token(prompt))

    def first(self, i: int, rid: int, t: float) -> None:
        f = self.flights[i].get(rid)
        if f is not None:
            f.first_at = t

    def done(self, i: int, rid: int) -> None:
        self.flights[i].pop(rid, None)


def capacity(engines: list[Engine], jobs: list[tuple[int, int, bytes]]) -> float:
    """Requests/s the pool completes with every batch slot busy."""
    return sum(e.batch / (sum(e.service(p, t) for p, t, _ in jobs) / len(jobs)) for e in engines)


def _with_model(body: bytes, model: str) -> bytes:
    return body.replace(b'"model":"' + MODEL.encode() + b'"', b'"model":"' + model.encode() + b'"', 1)


async def _drain(sims: list[Any], within: float = 60.0) -> None:
    """Wait until every engine is idle (a previous run's stragglers must not skew the next)."""
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        states = await asyncio.gather(*(asyncio.to_thread(s.state) for s in sims))
        if all(st["running"] == 0 and st["waiting"] == 0 for st in states):
            return
        await asyncio.sleep(0.2)


def _stats(samples: list[loadgen.Sample | None], arrivals: list[float], deadline: float) -> dict[str, Any]:
    lat: list[float] = []
    ttft: list[float] = []
    errors = unfinished = 0
    for s, at in zip(samples, arrivals, strict=True):
        if s is None:  # still running at the deadline: censored at the deadline
            unfinished += 1
            lat.append(deadline - at)
            continue
        if not s.ok or not s.done:
            errors += 1
            continue
        lat.append(s.latency)
        ttft.append(s.ttfc)
    return {
        "n": len(samples), "errors": errors, "unfinished": unfinished,
        "mean_s": loadgen.mean(lat), "p50_s": loadgen.percentile(lat, 50), "p99_s": loadgen.percentile(lat, 99),
        "ttft_mean_s": loadgen.mean(ttft), "ttft_p99_s": loadgen.percentile(ttft, 99),
    }


async def _run_policy(name: str, jobs: list[tuple[int, int, bytes]], arrivals: list[float], deadline: float,
                      send_to: Any) -> list[loadgen.Sample | None]:
    pool = loadgen.ConnPool()
    try:
        return await loadgen.open_loop(arrivals, lambda i: send_to(pool, i), deadline)
    finally:
        pool.close()


def run(bench: Bench) -> dict[str, Any]:
    loads = bench.pick((0.9,), (0.6, 0.9))
    windows = {0.6: bench.pick(6.0, 15.0), 0.9: bench.pick(6.0, 20.0)}
    drain = bench.pick(8.0, 15.0)
    policies = bench.pick(("least_outstanding", "round_robin", "speed_aware", "oracle"),
                          (*POLICIES, FAST, "oracle"))
    out: dict[str, Any] = {"itls_ms": ITLS_MS, "batch": BATCH, "windows_s": windows, "drain_cap_s": drain, "runs": []}
    with procs.sims([sim_args(itl) for itl in ITLS_MS]) as sims:
        engines = [Engine(("127.0.0.1", s.port), itl / 1000, 2 * itl / 1000, itl / 500 / 1000)
                   for s, itl in zip(sims, ITLS_MS, strict=True)]
        pools = {p: {"endpoints": [s.base_url for s in sims], "balancer": p, "upstream_model": MODEL,
                     "max_concurrency": 64, "queue": "{max_size: 4096, timeout: 120}"} for p in POLICIES}
        plain = procs.Gateway("balancing", procs.gateway_yaml(pools), bench.placement)
        scraped = procs.Gateway("balancing-metrics", procs.gateway_yaml({"speed_aware": pools["speed_aware"]},
                                                                        extra=FAST_SCRAPE), bench.placement)
        with plain, scraped:
            warm = workload.chat_body(MODEL, workload.messages_for(16), 16, stream=True)
            bench.run(_warm_up(plain, scraped, warm))
            sample = workload.job_mix(300, seed=7, model=MODEL)
            cap = capacity(engines, sample)
            for load in loads:
                window = windows[load]
                rate = load * cap
                arrivals = [a for a in workload.poisson_arrivals(int(rate * window * 2) + 50, rate, seed=11)
                            if a < window]
                jobs = workload.job_mix(len(arrivals), seed=7, model=MODEL)
                bench.log(f"balancing: load {load:.0%} of {cap:.1f} req/s -> {len(arrivals)} requests in {window:.0f} s")
                for policy in policies:
                    before = [s.state()["requests_total"] for s in sims]
                    samples = bench.run(_one(policy, plain, scraped, engines, jobs, arrivals, window + drain))
                    after = bench.run(_settle(sims))
                    st = _stats(samples, arrivals, window + drain)
                    st.update(policy=policy, load=load, rate=rate, capacity=cap, window_s=window,
                              share=[a - b for a, b in zip(after, before, strict=True)])
                    out["runs"].append(st)
                    bench.log(f"balancing: {load:.0%} {policy:22s} mean {st['mean_s']:.2f} s p99 {st['p99_s']:.2f} s "
                              f"TTFT p99 {st['ttft_p99_s']:.2f} s share {st['share']} err {st['errors']} "
                              f"unfinished {st['unfinished']}")
    return out


async def _settle(sims: list[Any]) -> list[int]:
    await _drain(sims)
    states = await asyncio.gather(*(asyncio.to_thread(s.state) for s in sims))
    return [st["requests_total"] for st in states]


async def _warm_up(plain: procs.Gateway, scraped: procs.Gateway, body: bytes) -> None:
    """A few short requests through every pool, so speed estimates exist before measuring."""
    pool = loadgen.ConnPool()
    try:
        reqs = []
        for gw, names in ((plain, POLICIES), (scraped, ("speed_aware",))):
            for name in names:
                raw = loadgen.build_request(gw.target, "/v1/chat/completions", _with_model(body, name))
                reqs += [pool.request(gw.target, raw) for _ in range(16)]
        await asyncio.gather(*reqs)
    finally:
        pool.close()


async def _one(policy: str, plain: procs.Gateway, scraped: procs.Gateway, engines: list[Engine],
               jobs: list[tuple[int, int, bytes]], arrivals: list[float], deadline: float) -> list[loadgen.Sample | None]:
    if policy == "oracle":
        oracle = Oracle(engines)
        raws = [[loadgen.build_request(e.target, "/v1/chat/completions", body) for e in engines]
                for _, _, body in jobs]

        async def send_direct(pool: loadgen.ConnPool, i: int) -> loadgen.Sample:
            p, t, _ = jobs[i]
            k = oracle.choose(p, t)
            oracle.dispatched(k, i, p, t)
            try:
                return await pool.request(engines[k].target, raws[i][k],
                                          on_first=lambda s: oracle.first(k, i, s.first), tag=k)
            finally:
                oracle.done(k, i)

        return await _run_policy(policy, jobs, arrivals, deadline, send_direct)
    gw = scraped if policy == FAST else plain
    model = "speed_aware" if policy == FAST else policy
    gw_raws = [loadgen.build_request(gw.target, "/v1/chat/completions", _with_model(body, model)) for _, _, body in jobs]

    async def send_gw(pool: loadgen.ConnPool, i: int) -> loadgen.Sample:
        return await pool.request(gw.target, gw_raws[i])

    return await _run_policy(policy, jobs, arrivals, deadline, send_gw)
