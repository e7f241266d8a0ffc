"""Scenario: cache-aware routing (issue #15) on simulated vLLM engines with prefix caching.

Four simulated engines: batch 4, TTFT 20 ms + 1 ms per UNCACHED prompt token (prefill
dominates a long prompt's TTFT, as on real GPUs), ITL 40 ms growing to 60 ms with a full
batch, prefix caching on with 16-token blocks and a bounded KV cache (700 blocks = 11.2K
tokens each, about a third of the live conversations), `--enable-prompt-tokens-details`.

Workloads (fixed seeds; the same sessions for every policy):
1. chat: conversations with one shared system prompt (~1.6 KB), 4 turns of 60-140 words,
   answers of 40 tokens, history growing each turn (the engine's own answers are resent),
   exponential think time between turns (mean 0.5 s: compressed to keep the run short).
2. agent: one shared ~25 KB tool schema, sessions of 4 steps, each adding a short tool
   result and question to a growing history.
3. random: single-turn prompts sharing nothing.
4. skew: half the requests share one hot ~8 KB prefix (a document) with a varying
   question; the other half are random.

Load: sessions arrive as a Poisson process at a rate giving 50/70/90% of the pool's
capacity, measured first for each workload (requests/s completed by speed_aware with
every batch slot busy: sessions back to back, no think time). Policies: cache_aware,
speed_aware, least_outstanding, round_robin, each through a fresh gateway (fresh index),
the engines' caches reset between runs; and an oracle, a client that mirrors each
engine's LRU exactly (the same token ids and block hashes the simulator computes) and
sends each request straight to the engine of least expected TTFT (queue wait plus
prefill of its uncached tokens). cache_aware and speed_aware also behind TWO gateway
replicas, each request to one of them at random (the worst case for a per-replica index),
sharing one redis-server (as they would for rate limits): cache_aware's replicas share
conversation records through it.

This is the wall-clock check on real processes; its engines are shrunk (batch 4, an
11K-token KV cache, 1 ms of prefill per token, 40 ms ITL) so that a 2-core machine can
drive them, which makes it unrepresentative of GPU engines. The representative sizes are
in `benchmarks/cachesim` (simulated time).

Figures per run: mean and p99 TTFT and end-to-end latency (client side), the hit rate from
the engines' own counters (vllm:prefix_cache_hits / queries, tokens), and the load spread:
the busiest engine's share of requests over the mean share.

`python -m benchmarks.scenarios.cache_aware [--quick]` runs it alone and rewrites its
section of benchmarks/RESULTS.md.
"""

from __future__ import annotations

import asyncio
import math
import random
import time
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import orjson

from gateway.sim.prefix_cache import render_chat
from gateway.sim.testing import SimProcess

from .. import loadgen, procs
from ..context import Bench

MODEL = "m"
ENGINES = 4
BATCH = 4
# Slow decode keeps events per second low: on a shared 2-core machine the measurement must
# be bound by the engines' batch slots, not by the CPU that relays the streams.
TTFT_MS, ITL_MS, PREFILL_MS = 20.0, 40.0, 1.0
BLOCK, KV_BLOCKS = 16, 700
MAX_TOKENS = 16
CHAT_TOKENS = 40
SIM_ARGS = ["--served-model-name", MODEL, "--max-num-seqs", str(BATCH), "--ttft-ms", str(TTFT_MS),
            "--itl-ms", str(ITL_MS), "--prefill-ms-per-token", str(PREFILL_MS), "--block-size", str(BLOCK),
            "--num-gpu-blocks-override", str(KV_BLOCKS), "--enable-prompt-tokens-details",
            "--max-model-len", str(BLOCK * KV_BLOCKS), "--output-tokens", str(CHAT_TOKENS),
            "--batch-slowdown", "1.5"]
GATEWAY_POLICIES = ("cache_aware", "speed_aware", "least_outstanding", "round_robin")
WORKLOADS = ("chat", "agent", "random", "skew")

_WORDS = ("the of and to in is for on with as by at from this that be are was it an or which cache route "
          "token engine prefix model request backend latency batch queue python system prompt agent tool "
          "schema value field return error state policy load hit miss block memory time data user answer").split()


# --- workloads ------------------------------------------------------------------------------


def words(rng: random.Random, n: int) -> str:
    return " ".join(rng.choice(_WORDS) for _ in range(n))


@dataclass
class Session:
    start: float  # seconds after the run starts
    prefix: list[dict[str, Any]]  # messages every turn starts with (system prompt, document)
    turns: list[str]  # user messages, one request each
    thinks: list[float]  # pause after each answer
    tools: list[dict[str, Any]] | None = None
    max_tokens: int = MAX_TOKENS


def _tools(rng: random.Random, kb: int) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    while len(orjson.dumps(out)) < kb * 1024:
        i = len(out)
        out.append({"type": "function", "function": {
            "name": f"tool_{i}", "description": words(rng, 40),
            "parameters": {"type": "object", "properties": {f"arg{j}": {"type": "string", "description": words(rng, 8)}
                                                            for j in range(4)}}}})
    return out


def sessions(workload: str, rate: float, window: float, seed: int, think: float = 0.5) -> list[Session]:
    """Sessions arriving at `rate` requests/s on average during `window` seconds."""
    rng = random.Random(seed)
    shared = random.Random(1000 + seed)
    system = {"role": "system", "content": "You are the team's assistant. " + words(shared, 300)}
    tools = _tools(shared, 25) if workload == "agent" else None
    document = {"role": "system", "content": "Answer from this document. " + words(shared, 1500)}
    turns_per = {"chat": 4, "agent": 4, "random": 1, "skew": 1}[workload]
    out: list[Session] = []
    t = 0.0
    while True:
        t += rng.expovariate(rate / turns_per)
        if t >= window:
            return out
        if workload == "chat":
            turns = [words(rng, rng.randint(60, 140)) for _ in range(turns_per)]
            # Chat answers are longer than an agent's tool calls, and the next turn resends them.
            out.append(Session(t, [system], turns, [rng.expovariate(1 / think) for _ in turns], max_tokens=CHAT_TOKENS))
        elif workload == "agent":
            turns = [f"Task: {words(rng, 30)}"] + [f"Tool result: {words(rng, 90)}" for _ in range(turns_per - 1)]
            out.append(Session(t, [], turns, [rng.expovariate(1 / (think / 4)) for _ in turns], tools))
        elif workload == "random":
            out.append(Session(t, [], [words(rng, rng.randint(400, 900))], [0.0]))
        else:
            hot = rng.random() < 0.5
            prefix = [document] if hot else []
            out.append(Session(t, prefix, [words(rng, rng.randint(20, 40) if hot else rng.randint(400, 900))], [0.0]))


# --- the oracle: each engine's cache mirrored exactly ----------------------------------------


@dataclass
class Mirror:
    """One engine's prefix cache as an LRU of the simulator's own block hashes."""

    blocks: OrderedDict[int, None] = field(default_factory=OrderedDict)
    outstanding: int = 0

    def cached(self, hashes: list[int], prompt_len: int) -> int:
        n, limit = 0, min(len(hashes), (prompt_len - 1) // BLOCK)
        while n < limit and hashes[n] in self.blocks:
            n += 1
        return n * BLOCK

    def touch(self, hashes: list[int]) -> None:
        for h in reversed(hashes):
            self.blocks[h] = None
            self.blocks.move_to_end(h)
        while len(self.blocks) > KV_BLOCKS - BATCH * 4:  # running requests' blocks are not cache
            self.blocks.popitem(last=False)


def block_hashes(ids: list[int]) -> list[int]:
    out, parent = [], 0
    for s in range(0, len(ids) - BLOCK + 1, BLOCK):
        parent = hash((parent, tuple(ids[s:s + BLOCK])))
        out.append(parent)
    return out


class Oracle:
    def __init__(self, targets: list[loadgen.Target]) -> None:
        self.targets = targets
        self.mirrors = [Mirror() for _ in targets]
        self.service = 0.5  # seconds per request in a batch slot, learnt as answers come back

    def pick(self, messages: list[dict[str, Any]], tools: list[dict[str, Any]] | None) -> tuple[int, list[int]]:
        ids = render_chat(messages, tools)
        hashes = block_hashes(ids)

        def ttft(i: int) -> float:
            m = self.mirrors[i]
            wait = max(0, m.outstanding + 1 - BATCH) * self.service / BATCH
            return wait + (TTFT_MS + PREFILL_MS * (len(ids) - m.cached(hashes, len(ids)))) / 1000

        best = min(range(len(self.targets)), key=ttft)
        self.mirrors[best].touch(hashes)
        return best, ids

    def answered(self, i: int, ids: list[int], answer: str, seconds: float) -> None:
        # The engine also caches the answer's blocks; the next turn resends them.
        from gateway.sim.prefix_cache import output_ids

        self.mirrors[i].touch(block_hashes(ids + output_ids(answer, True)))
        self.service = 0.9 * self.service + 0.1 * seconds


# --- the client ----------------------------------------------------------------------------


@dataclass
class Result:
    ok: bool
    ttft: float = math.nan
    latency: float = math.nan
    error: str = ""


async def _post(http: aiohttp.ClientSession, url: str, body: dict[str, Any]) -> tuple[Result, str]:
    t0 = time.perf_counter()
    first: float | None = None
    parts: list[str] = []
    try:
        async with http.post(url, data=orjson.dumps(body), headers={"content-type": "application/json"}) as r:
            if r.status != 200:
                return Result(False, error=f"HTTP {r.status}: {(await r.text())[:200]}"), ""
            async for line in r.content:
                if not line.startswith(b"data: {"):
                    continue
                ev = orjson.loads(line[6:])
                for ch in ev.get("choices") or ():
                    text = (ch.get("delta") or {}).get("content")
                    if text:
                        if first is None:
                            first = time.perf_counter()
                        parts.append(text)
    except (aiohttp.ClientError, TimeoutError) as e:
        return Result(False, error=f"{type(e).__name__}: {e}"), ""
    end = time.perf_counter()
    return Result(first is not None, (first or end) - t0, end - t0), "".join(parts)


async def drive(sess: list[Session], urls: list[str], deadline: float, seed: int,
                oracle: Oracle | None = None) -> list[Result]:
    """Run every session (turns in order, think time between); requests still open at the
    deadline are cancelled and count as failures."""
    results: list[Result] = []
    rng = random.Random(seed)
    conn = aiohttp.TCPConnector(limit=0, force_close=False)
    async with aiohttp.ClientSession(connector=conn, timeout=aiohttp.ClientTimeout(total=None)) as http:
        t0 = time.perf_counter()

        async def one(s: Session) -> None:
            await asyncio.sleep(max(0.0, t0 + s.start - time.perf_counter()))
            history: list[dict[str, Any]] = []
            for text, pause in zip(s.turns, s.thinks, strict=True):
                history.append({"role": "user", "content": text})
                messages = [*s.prefix, *history]
                body: dict[str, Any] = {"model": MODEL, "messages": messages, "max_tokens": s.max_tokens,
                                        "stream": True}
                if s.tools:
                    body["tools"] = s.tools
                if oracle is not None:
                    i, ids = oracle.pick(messages, s.tools)
                    oracle.mirrors[i].outstanding += 1
                    try:
                        res, answer = await _post(http, urls[i] + "/chat/completions", body)
                    finally:
                        oracle.mirrors[i].outstanding -= 1
                    if res.ok:
                        oracle.answered(i, ids, answer, res.latency)
                else:
                    url = urls[rng.randrange(len(urls))] if len(urls) > 1 else urls[0]
                    res, answer = await _post(http, url + "/chat/completions", body)
                results.append(res)
                if not res.ok:
                    return
                history.append({"role": "assistant", "content": answer})
                await asyncio.sleep(pause)

        tasks = [asyncio.ensure_future(one(s)) for s in sess]
        _, late = await asyncio.wait(tasks, timeout=max(0.1, deadline - (time.perf_counter() - t0)))
        for t in late:
            t.cancel()
        await asyncio.gather(*late, return_exceptions=True)
        results += [Result(False, error="unfinished at the deadline")] * len(late)
    return results


# --- one run ------------------------------------------------------------------------------


def _snap(sims: list[SimProcess]) -> list[tuple[int, int, int]]:
    """(requests, prefix-cache queries, hits) of each engine."""
    out = []
    for s in sims:
        st = s.state()
        out.append((st["requests_total"], st["kv_cache"]["queries"], st["kv_cache"]["hits"]))
    return out


async def _idle(sims: list[SimProcess], within: float = 60.0) -> None:
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        states = await asyncio.gather(*(asyncio.to_thread(s.state) for s in sims))
        if all(st["running"] == 0 and st["waiting"] == 0 for st in states):
            return
        await asyncio.sleep(0.2)


def _reset(sims: list[SimProcess]) -> None:
    for s in sims:
        status, _ = s.request("POST", "/reset_prefix_cache")
        assert status == 200, status


def _gateway_yaml(sims: list[SimProcess], policy: str, redis_url: str | None = None) -> str:
    pool = {"endpoints": [s.base_url for s in sims], "balancer": policy, "upstream_model": MODEL,
            "max_concurrency": 64, "queue": "{max_size: 4096, timeout: 120}"}
    # Replicas share conversation records through the Redis they share for rate limits.
    return procs.gateway_yaml({MODEL: pool}, extra=f'redis: "{redis_url}"\n' if redis_url else "")


def summarize(results: list[Result], before: list[tuple[int, int, int]],
              after: list[tuple[int, int, int]]) -> dict[str, Any]:
    ok = [r for r in results if r.ok]
    ttft = [r.ttft for r in ok]
    lat = [r.latency for r in ok]
    share = [a[0] - b[0] for a, b in zip(after, before, strict=True)]
    queries = sum(a[1] - b[1] for a, b in zip(after, before, strict=True))
    hits = sum(a[2] - b[2] for a, b in zip(after, before, strict=True))
    mean_share = sum(share) / len(share) if share else 0.0
    errors = [r.error for r in results if not r.ok]
    return {
        "n": len(results), "errors": len(errors), "error_examples": errors[:3],
        "ttft_mean_s": loadgen.mean(ttft), "ttft_p99_s": loadgen.percentile(ttft, 99),
        "e2e_mean_s": loadgen.mean(lat), "e2e_p99_s": loadgen.percentile(lat, 99),
        "hit_rate": hits / queries if queries else 0.0, "share": share,
        "spread": max(share) / mean_share if mean_share else 0.0,
    }


async def _run(bench: Bench, sims: list[SimProcess], policy: str, replicas: int, sess: list[Session],
               deadline: float, seed: int) -> dict[str, Any]:
    await _idle(sims)
    _reset(sims)
    before = _snap(sims)
    if policy == "oracle":
        oracle = Oracle([("127.0.0.1", s.port) for s in sims])
        results = await drive(sess, [s.base_url for s in sims], deadline, seed, oracle)
    else:
        redis = procs.Redis().start() if replicas > 1 and procs.Redis.available() else None
        url = redis.url if redis is not None else None
        gws = [procs.Gateway(f"cache-{policy}-{i}", _gateway_yaml(sims, policy, url), bench.placement)
               for i in range(replicas)]
        try:
            for g in gws:
                await asyncio.to_thread(g.start)
            # Let the gateways read the engines' /metrics once (KV capacity, queue gauges).
            await asyncio.sleep(1.2)
            results = await drive(sess, [f"http://127.0.0.1:{g.port}/v1" for g in gws], deadline, seed)
        finally:
            for g in gws:
                await asyncio.to_thread(g.stop)
            if redis is not None:
                redis.stop()
    await _idle(sims)
    return summarize(results, before, _snap(sims))


async def _capacity(bench: Bench, sims: list[SimProcess], workload: str, seconds: float) -> float:
    """Requests/s speed_aware completes with every batch slot busy: sessions back to back."""
    sess = [Session(0.0, s.prefix, s.turns, [0.0] * len(s.turns), s.tools)
            for s in sessions(workload, 1000.0, 10.0, seed=99)][: ENGINES * BATCH * 2]
    await _idle(sims)
    _reset(sims)
    g = procs.Gateway("cache-capacity", _gateway_yaml(sims, "speed_aware"), bench.placement)
    done: list[float] = []
    with g:
        url = f"http://127.0.0.1:{g.port}/v1"
        t0 = time.perf_counter()

        async def loop(s: Session, http: aiohttp.ClientSession) -> None:
            i = 0
            history: list[dict[str, Any]] = []
            while time.perf_counter() - t0 < seconds:
                if i % len(s.turns) == 0:
                    history = []  # the session starts over
                history.append({"role": "user", "content": s.turns[i % len(s.turns)]})
                body: dict[str, Any] = {"model": MODEL, "messages": [*s.prefix, *history], "max_tokens": s.max_tokens,
                                        "stream": True}
                if s.tools:
                    body["tools"] = s.tools
                res, answer = await _post(http, url + "/chat/completions", body)
                if res.ok:
                    done.append(time.perf_counter() - t0)
                    history.append({"role": "assistant", "content": answer})
                i += 1

        async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as http:
            await asyncio.gather(*(loop(s, http) for s in sess))
    warm = seconds / 3  # the first third fills the caches and the batches
    n = sum(1 for t in done if warm <= t <= seconds)
    return n / (seconds - warm)


def run(bench: Bench, workloads: tuple[str, ...] = WORKLOADS, loads: tuple[float, ...] | None = None,
        only: list[tuple[str, int]] | None = None) -> dict[str, Any]:
    """`only`: run just these (policy, gateways) pairs at every load (focused experiments)."""
    loads = loads or bench.pick((0.7,), (0.5, 0.7, 0.9))
    window = bench.pick(10.0, 14.0)
    drain = bench.pick(14.0, 14.0)
    cap_seconds = bench.pick(6.0, 9.0)
    out: dict[str, Any] = {"engines": ENGINES, "batch": BATCH, "kv_blocks": KV_BLOCKS, "block": BLOCK,
                           "prefill_ms_per_token": PREFILL_MS, "window_s": window, "capacity": {}, "runs": []}
    env = {"VLLM_SERVER_DEV_MODE": "1"}  # for POST /reset_prefix_cache between runs
    sims = [SimProcess([*SIM_ARGS, "--seed", str(i)], start=False, timeout=30, env=env) for i in range(ENGINES)]
    try:
        for s in sims:
            s.start()
        for workload in workloads:
            cap = bench.run(_capacity(bench, sims, workload, cap_seconds))
            out["capacity"][workload] = cap
            bench.log(f"cache_aware: {workload}: capacity {cap:.1f} req/s (speed_aware, all slots busy)")
            for load in loads:
                sess = sessions(workload, load * cap, window, seed=7)
                plan: list[tuple[str, int]] = [("cache_aware", 1), ("speed_aware", 1)]
                if bench.quick:
                    plan += [("cache_aware", 2)] if workload == "chat" else []
                elif load == 0.7:
                    plan += [("oracle", 1), ("cache_aware", 2), ("speed_aware", 2), ("least_outstanding", 1),
                             ("round_robin", 1)]
                for policy, replicas in only or plan:
                    st = bench.run(_run(bench, sims, policy, replicas, sess, window + drain, seed=3))
                    st.update(workload=workload, load=load, policy=policy, replicas=replicas, rate=load * cap,
                              sessions=len(sess))
                    out["runs"].append(st)
                    bench.log(f"cache_aware: {workload} {load:.0%} {policy:17s} x{replicas} TTFT "
                              f"{st['ttft_mean_s']:.3f}/{st['ttft_p99_s']:.3f} s e2e {st['e2e_mean_s']:.3f}/"
                              f"{st['e2e_p99_s']:.3f} s hit {st['hit_rate']:.1%} spread {st['spread']:.2f} "
                              f"share {st['share']} err {st['errors']}/{st['n']}")
    finally:
        for s in sims:
            s.close()
    out["targets"] = targets(out["runs"])
    out["quick"] = bench.quick
    return out


# --- targets and report ----------------------------------------------------------------------


def _find(runs: list[dict[str, Any]], workload: str, load: float, policy: str, replicas: int = 1) -> dict[str, Any] | None:
    return next((r for r in runs if r["workload"] == workload and r["load"] == load and r["policy"] == policy
                 and r["replicas"] == replicas), None)


FIGURES = ("ttft_mean_s", "ttft_p99_s", "e2e_mean_s", "e2e_p99_s")


def targets(runs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Issue #15's targets, each with its figures and met / not met (None: not measured)."""
    out: list[dict[str, Any]] = []

    def add(what: str, ok: bool | None, detail: str) -> None:
        out.append({"target": what, "met": ok, "detail": detail})

    for w in ("chat", "agent"):
        ca, sa = _find(runs, w, 0.7, "cache_aware"), _find(runs, w, 0.7, "speed_aware")
        if ca and sa:
            cut = 1 - ca["ttft_mean_s"] / sa["ttft_mean_s"]
            ratio = ca["hit_rate"] / sa["hit_rate"] if sa["hit_rate"] else math.inf
            add(f"({w}) 70%: mean TTFT >= 50% lower than speed_aware", cut >= 0.5,
                f"{ca['ttft_mean_s']:.3f} s vs {sa['ttft_mean_s']:.3f} s ({cut:.0%} lower)")
            add(f"({w}) 70%: hit rate >= 2x speed_aware", ratio >= 2,
                f"{ca['hit_rate']:.1%} vs {sa['hit_rate']:.1%} ({ratio:.2f}x)")
    worst: tuple[float, str] = (-math.inf, "")
    for r in runs:
        if r["workload"] == "random" and r["policy"] == "cache_aware":
            sa = _find(runs, "random", r["load"], "speed_aware", r["replicas"])
            if sa:
                for f in FIGURES:
                    d = r[f] / sa[f] - 1 if sa[f] else 0.0
                    if d > worst[0]:
                        worst = (d, f"{f} at {r['load']:.0%} x{r['replicas']}: {r[f]:.3f} vs {sa[f]:.3f} s")
    if worst[1]:
        add("(random) no figure more than 3% worse than speed_aware", worst[0] <= 0.03,
            f"worst: {worst[1]} ({worst[0]:+.1%})")
    skew = [r for r in runs if r["workload"] == "skew" and r["policy"] == "cache_aware"]
    if skew:
        top = max(skew, key=lambda r: r["spread"])
        add("(skew) no backend above 1.5x the mean load", top["spread"] <= 1.5,
            f"max spread {top['spread']:.2f} ({top['load']:.0%} x{top['replicas']}, shares {top['share']})")
        p99 = []
        for r in skew:
            sa = _find(runs, "skew", r["load"], "speed_aware", r["replicas"])
            if sa:
                p99.append((r["ttft_p99_s"] <= sa["ttft_p99_s"], f"{r['load']:.0%} x{r['replicas']}: "
                            f"{r['ttft_p99_s']:.3f} vs {sa['ttft_p99_s']:.3f} s"))
        if p99:
            add("(skew) p99 TTFT no worse than speed_aware", all(ok for ok, _ in p99), "; ".join(d for _, d in p99))
    for w in ("chat", "agent"):
        one, two = _find(runs, w, 0.7, "cache_aware"), _find(runs, w, 0.7, "cache_aware", 2)
        if one and two and one["hit_rate"]:
            loss = 1 - two["hit_rate"] / one["hit_rate"]
            add(f"({w}) a second gateway replica loses < 5% of the hit rate", loss < 0.05,
                f"{two['hit_rate']:.1%} with 2 vs {one['hit_rate']:.1%} with 1 ({loss:.1%} lost)")
    return out


def _f(x: float) -> str:
    return "n/a" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{x:.3f}"


def section(res: dict[str, Any]) -> str:
    if not res or "runs" not in res:
        return ""
    rows = ["| workload | load | policy | gateways | TTFT mean s | TTFT p99 s | e2e mean s | e2e p99 s | hit rate "
            "| spread | requests per engine | errors |", "|" + "---|" * 12]
    for r in res["runs"]:
        rows.append(f"| {r['workload']} | {r['load']:.0%} | {r['policy']} | {r['replicas']} | {_f(r['ttft_mean_s'])} "
                    f"| {_f(r['ttft_p99_s'])} | {_f(r['e2e_mean_s'])} | {_f(r['e2e_p99_s'])} | {r['hit_rate']:.1%} "
                    f"| {r['spread']:.2f} | {' / '.join(map(str, r['share']))} | {r['errors']}/{r['n']} |")
    tg = ["| target | met | figures |", "|---|---|---|"]
    for t in res.get("targets", []):
        tg.append(f"| {t['target']} | {'yes' if t['met'] else 'NO'} | {t['detail']} |")
    caps = ", ".join(f"{w} {c:.1f} req/s" for w, c in res.get("capacity", {}).items())
    return f"""## Cache-aware routing (issue #15)

`benchmarks/scenarios/cache_aware.py` ({'quick' if res.get('quick') else 'full'} run, {res.get('elapsed_s', 0):.0f} s).
{res['engines']} simulated vLLM engines, batch {res['batch']}, prefill {res['prefill_ms_per_token']} ms per
uncached prompt token, KV cache {res['kv_blocks']} blocks of {res['block']} tokens each, prefix caching on.
Capacity (speed_aware, every batch slot busy): {caps}. Load = share of that capacity offered
as Poisson session arrivals over {res['window_s']:.0f} s; the same sessions (seeded) for every policy.
Hit rate: the engines' own `vllm:prefix_cache_hits / queries` (tokens). Spread: the busiest
engine's requests over the mean. With 2 gateways each request goes to one of them at random.

{chr(10).join(tg)}

{chr(10).join(rows)}
"""


BEGIN, END = "<!-- cache_aware:begin -->", "<!-- cache_aware:end -->"


def main(argv: list[str] | None = None) -> int:
    import argparse
    import json
    from pathlib import Path

    p = argparse.ArgumentParser(prog="python -m benchmarks.scenarios.cache_aware")
    p.add_argument("--quick", action="store_true")
    p.add_argument("--workloads", nargs="+", choices=WORKLOADS, default=list(WORKLOADS))
    p.add_argument("--loads", nargs="+", type=float, help="e.g. 0.7 (default: the mode's loads)")
    p.add_argument("--only", nargs="+", metavar="POLICY[xN]",
                   help="focused run: just these policies (xN: N gateways), RESULTS.md untouched")
    args = p.parse_args(argv)
    placement = procs.Placement.detect()
    placement.pin_self()
    bench = Bench(quick=args.quick, placement=placement)
    t0 = time.monotonic()
    only = [(o.split("x")[0], int(o.split("x")[1]) if "x" in o else 1) for o in args.only] if args.only else None
    res = run(bench, tuple(args.workloads), tuple(args.loads) if args.loads else None, only)
    res["quick"], res["elapsed_s"] = args.quick, time.monotonic() - t0
    procs.OUT.mkdir(parents=True, exist_ok=True)
    name = "cache_aware_focused.json" if only or args.workloads != list(WORKLOADS) else "cache_aware.json"
    (procs.OUT / name).write_text(json.dumps(res, indent=1, default=str))
    if name != "cache_aware.json":
        for t in res["targets"]:
            bench.log(f"{'met' if t['met'] else 'NOT met'}: {t['target']}: {t['detail']}")
        return 0
    path = Path(__file__).resolve().parents[1] / "RESULTS.md"
    text = path.read_text() if path.exists() else ""
    block = f"{BEGIN}\n{section(res)}{END}\n"
    if BEGIN in text and END in text:
        text = text[: text.index(BEGIN)] + block + text[text.index(END) + len(END) + 1:]
    else:
        text = text.rstrip("\n") + "\n\n" + block
    path.write_text(text)
    bench.log(f"wrote {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
