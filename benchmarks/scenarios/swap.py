"""Swap scenario (issue #16): two on-demand pools pinned to one simulated device.

`python -m benchmarks.scenarios.swap [--quick]` (or `run(bench)` from the harness) writes
`benchmarks/SWAP.md` and `benchmarks/out/swap.json`.

Engines: simulators with a device ledger (SIM_DEVICE_DIR): each claims 90% of an 80 GB
device, so two cannot be awake on it at once; cold start `--startup-seconds 2` (plus the
process's own boot, 1-3 s on this machine), `--wake-seconds 0.5`, `--sleep-seconds 0.2`, TTFT 5 ms, ITL 10 ms.

Trace (fixed seed, same for every configuration): phases that alternate between the two
models (A-B-A-B...), each 2-5 s of Poisson arrivals (mean gap 0.25 s: bursts), separated
by 0.5-2 s of think time; 10% of requests in a phase ask for the other model (users who
switch model mid-conversation: what makes first-come-first-served thrash). Every request
streams 20 tokens. Each configuration gets a fresh gateway (its own process, pinned as
in the other scenarios); one request for each model first (A, then B: both engines have
loaded once, as in a gateway that has been up a while), then the trace, open-loop.

Configurations: swap policy `residency` (min_residency 2 s, idle_grace 1 s, max_defer 15 s,
cost_factor 2 (the default): a turn lasts at least 2 x the measured cost of the swap that ends
it, so 2 s (min_residency) before a ~0.7 s sleep + wake, ~10-12 s before a stop + cold load) vs
`fcfs` (swap as soon as another model is asked for, after draining), each with sleep mode
(sleep level 1 / wake) and without (stop / start). All four run in one invocation on the same
trace (same seed).

Measured per configuration: requests, failed (HTTP error or transport error), aborted
(finish_reason "abort"), swaps (the gateway's gateway_swaps_total), TTFT p50/p99 over all
requests and over the requests that waited for a load, engine wake/load time (engine-side
durations, from the simulator's own transition log and the gateway's histograms).

Gateway-added time after a swap: a separate probe, in both residency configurations. With A
resident and idle past its turn, one request for B: its client TTFT minus the engine's own
time: with sleep, A's sleep and B's wake as the simulator reports them; with stop/start, A's
stop (SIGTERM to exit, as the gateway measured it: the sim does not outlive it to report)
and B's boot-to-ready (`ready_after_s`: from the kernel's process start, interpreter
included). B's TTFT (5 ms) is subtracted too. What is left is what the gateway itself spends
noticing, draining, deciding, spawning, detecting readiness and routing. Repeated
alternately 6 (quick: 4) times; the first cold start of each model is not counted.
"""

from __future__ import annotations

import asyncio
import json
import os
import random
import shutil
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import aiohttp

from .. import procs
from ..context import Bench
from ..loadgen import percentile

SIM_ARGS = ["--ttft-ms", "5", "--itl-ms", "10", "--startup-seconds", "2", "--wake-seconds", "0.5",
            "--sleep-seconds", "0.2", "--max-num-seqs", "64"]  # fmt: skip
MIN_RESIDENCY = 2.0
IDLE_GRACE = 1.0
MAX_DEFER = 15.0
COST_FACTOR = 2.0  # the default, written out
ADMIN_KEY = "bench-admin-loopback-only"  # opens /admin of a gateway on 127.0.0.1 started here
CONFIGS = (("residency", 1), ("fcfs", 1), ("residency", 0), ("fcfs", 0))


@dataclass(frozen=True)
class Arrival:
    at: float
    model: str


def trace(seconds: float, seed: int = 16) -> list[Arrival]:
    rng = random.Random(seed)
    out: list[Arrival] = []
    t, model = 0.5, "a"
    while t < seconds:
        end = t + rng.uniform(2, 5)
        while t < min(end, seconds):
            other = "b" if model == "a" else "a"
            out.append(Arrival(round(t, 3), other if rng.random() < 0.1 else model))
            t += rng.expovariate(4.0)
        t += rng.uniform(0.5, 2.0)
        model = "b" if model == "a" else "a"
    return out


def config_yaml(policy: str, sleep: int, log_dir: Path) -> str:
    pools = "".join(
        f"""  {name}:
    engine: sim
    model: /models/{name}
    args: [{", ".join(json.dumps(a) for a in SIM_ARGS)}]
    start: on_demand
    sleep: {sleep}
    devices: ["0"]
    startup_timeout: 60
    max_concurrency: 64
    health: {{interval: 1}}
    queue: {{max_size: 1000}}
"""
        for name in ("a", "b")
    )
    return f"""auth: {{mode: none, admin_key: {ADMIN_KEY}}}
store: "memory://"
metering: {{enabled: false}}
server: {{drain_seconds: 30}}
engines:
  gpus: ["0"]
  log_dir: {log_dir}
  stop_grace_seconds: 5
  swap: {{policy: {policy}, min_residency: {MIN_RESIDENCY}, idle_grace: {IDLE_GRACE}, max_defer: {MAX_DEFER},
         cost_factor: {COST_FACTOR}}}
pools:
{pools}"""


@dataclass
class Outcome:
    model: str
    ok: bool
    ttft: float | None = None
    finish: str = ""
    error: str = ""


async def one(http: aiohttp.ClientSession, base: str, model: str) -> Outcome:
    body = {"model": model, "messages": [{"role": "user", "content": "x"}], "max_tokens": 20, "stream": True}
    t0 = time.monotonic()
    out = Outcome(model, False)
    try:
        async with http.post(base + "/v1/chat/completions", json=body) as r:
            if r.status != 200:
                out.error = f"HTTP {r.status}: {(await r.text())[:200]}"
                return out
            async for raw in r.content:
                line = raw.decode().strip()
                if not line.startswith("data: {"):
                    continue
                if out.ttft is None and '"content":"' in line.replace(" ", ""):
                    out.ttft = time.monotonic() - t0
                if '"finish_reason":"' in line.replace(" ", ""):
                    out.finish = line.replace(" ", "").split('"finish_reason":"')[1].split('"')[0]
        out.ok = out.finish in ("length", "stop")
        if not out.ok:
            out.error = f"finish_reason {out.finish!r}"
    except (aiohttp.ClientError, TimeoutError) as e:
        out.error = repr(e)
    return out


async def replay(base: str, arrivals: list[Arrival]) -> list[Outcome]:
    timeout = aiohttp.ClientTimeout(total=180)
    async with aiohttp.ClientSession(timeout=timeout, connector=aiohttp.TCPConnector(limit=0)) as http:
        start = time.monotonic()

        async def at(a: Arrival) -> Outcome:
            await asyncio.sleep(max(0.0, start + a.at - time.monotonic()))
            return await one(http, base, a.model)

        return list(await asyncio.gather(*(at(a) for a in arrivals)))


async def scrape(base: str) -> dict[str, float]:
    """Sums of the gateway's swap/load series by metric name (all pools)."""
    async with aiohttp.ClientSession() as http, http.get(base + "/metrics") as r:
        text = await r.text()
    sums: dict[str, float] = {}
    for line in text.splitlines():
        name = line.split("{", 1)[0].split(" ", 1)[0]
        if name in ("gateway_swaps_total", "gateway_engine_wake_seconds_sum", "gateway_engine_wake_seconds_count",
                    "gateway_engine_load_seconds_sum", "gateway_engine_load_seconds_count",
                    "gateway_request_load_wait_seconds_count"):
            sums[name] = sums.get(name, 0.0) + float(line.rsplit(" ", 1)[1])
    return sums


async def backends(base: str) -> dict[str, dict[str, Any]]:
    admin = {"Authorization": f"Bearer {ADMIN_KEY}"}
    async with aiohttp.ClientSession() as http, http.get(base + "/admin/backends", headers=admin) as r:
        return {row["pool"]: row for row in (await r.json())["data"]}


async def sim_ops(port: int) -> list[dict[str, Any]]:
    async with aiohttp.ClientSession() as http, http.get(f"http://127.0.0.1:{port}/sim/state") as r:
        return list((await r.json())["sleep"]["transitions"])


async def wait_state(base: str, pool: str, state: str, timeout: float = 60.0) -> dict[str, Any]:  # noqa: ASYNC109
    deadline = time.monotonic() + timeout
    while True:
        rows = await backends(base)
        if rows[pool]["state"] == state:
            return rows[pool]
        if time.monotonic() > deadline:
            raise TimeoutError(f"{pool} not {state} in {timeout}s: {rows[pool]}")
        await asyncio.sleep(0.05)


async def sim_state(port: int) -> dict[str, Any]:
    async with aiohttp.ClientSession() as http, http.get(f"http://127.0.0.1:{port}/sim/state") as r:
        return dict(await r.json())


async def probe_added(base: str, rounds: int, sleep: bool) -> list[float]:
    """Gateway-added time of one swap (see module docstring)."""
    added: list[float] = []
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=120)) as http:
        await one(http, base, "a")  # a resident
        for i in range(rounds):
            want, leave = ("b", "a") if i % 2 == 0 else ("a", "b")
            row = await wait_state(base, leave, "ready")
            # The resident must be evictable at once: its turn over and idle past idle_grace.
            await asyncio.sleep(max((row["turn_seconds"] or 0.0) - (row["uptime"] or 0.0), 0.0) + IDLE_GRACE + 0.3)
            loads_before = (await backends(base))[want]["last_load_seconds"]
            out = await one(http, base, want)
            assert out.ok and out.ttft is not None, out
            rows = await backends(base)
            if sleep:
                sleep_op = next(t for t in reversed(await sim_ops(row["port"])) if t["op"] == "sleep")
                wake_op = [t for t in await sim_ops(rows[want]["port"]) if t["op"] in ("wake_up", "start")]
                wake = wake_op[-1]["seconds"] if wake_op and wake_op[-1]["op"] == "wake_up" else None
                if wake is None:  # first turn of `want`: a cold start, not a wake
                    continue
                added.append(out.ttft - sleep_op["seconds"] - wake - 0.005)
            else:
                if loads_before is None:  # first turn of `want`: its first cold start
                    continue
                stop = rows[leave]["last_park_seconds"]
                boot = (await sim_state(rows[want]["port"]))["ready_after_s"]
                added.append(out.ttft - stop - boot - 0.005)
    return added


@dataclass
class Result:
    policy: str
    sleep: bool
    requests: int = 0
    failed: int = 0
    aborted: int = 0
    swaps: int = 0
    ttft_p50: float = 0.0
    ttft_p99: float = 0.0
    waited: int = 0
    waited_ttft_p50: float = 0.0
    waited_ttft_p99: float = 0.0
    wake_mean: float | None = None
    load_mean: float | None = None
    errors: list[str] = field(default_factory=list)


def run_config(bench: Bench, policy: str, sleep: int, arrivals: list[Arrival], added_rounds: int) -> tuple[Result, list[float]]:
    name = f"swap-{policy}-{'sleep' if sleep else 'restart'}"
    devdir = procs.OUT / "run" / name / "devices"
    shutil.rmtree(devdir, ignore_errors=True)
    devdir.mkdir(parents=True)
    yaml = config_yaml(policy, sleep, procs.OUT / "run" / name / "logs")
    res = Result(policy, bool(sleep))
    added: list[float] = []
    with procs.Gateway(name, yaml, bench.placement, env={"SIM_DEVICE_DIR": str(devdir)}) as gw:
        base = f"http://127.0.0.1:{gw.port}"
        warm = bench.run(replay(base, [Arrival(0, "a")])) + bench.run(replay(base, [Arrival(0, "b")]))
        assert all(o.ok for o in warm), warm
        before = bench.run(scrape(base))
        outs = bench.run(replay(base, arrivals))
        m = bench.run(scrape(base))
        if policy == "residency" and added_rounds:
            added = bench.run(probe_added(base, added_rounds, bool(sleep)))
    res.requests = len(outs)
    res.failed = sum(1 for o in outs if not o.ok and o.finish != "abort")
    res.aborted = sum(1 for o in outs if o.finish == "abort")
    res.errors = sorted({o.error for o in outs if o.error})[:5]
    res.swaps = int(m.get("gateway_swaps_total", 0) - before.get("gateway_swaps_total", 0))
    ttfts = [o.ttft for o in outs if o.ttft is not None]
    if ttfts:
        res.ttft_p50, res.ttft_p99 = percentile(ttfts, 50), percentile(ttfts, 99)
    # "Waited for a load": slower than anything an awake engine gives (TTFT 5 ms, 20 tokens).
    slow = [t for t in ttfts if t > 0.25]
    res.waited = len(slow)
    if slow:
        res.waited_ttft_p50, res.waited_ttft_p99 = percentile(slow, 50), percentile(slow, 99)
    if m.get("gateway_engine_wake_seconds_count"):
        res.wake_mean = m["gateway_engine_wake_seconds_sum"] / m["gateway_engine_wake_seconds_count"]
    if m.get("gateway_engine_load_seconds_count"):
        res.load_mean = m["gateway_engine_load_seconds_sum"] / m["gateway_engine_load_seconds_count"]
    bench.log(f"{name}: {res.requests} requests, {res.failed} failed, {res.aborted} aborted, {res.swaps} swaps, "
              f"TTFT p50 {res.ttft_p50:.3f}s p99 {res.ttft_p99:.3f}s")
    return res, added


def run(bench: Bench) -> dict[str, Any]:
    seconds = bench.pick(25.0, 45.0)
    arrivals = trace(seconds)
    results: list[Result] = []
    added: dict[str, list[float]] = {}
    for policy, sleep in CONFIGS:
        res, got = run_config(bench, policy, sleep, arrivals, bench.pick(4, 6))
        results.append(res)
        if got:
            added["sleep" if sleep else "restart"] = got
    out = {"trace_seconds": seconds, "requests": len(arrivals),
           "switches_in_trace": sum(1 for x, y in zip(arrivals, arrivals[1:], strict=False) if x.model != y.model),
           "results": [asdict(r) for r in results], "gateway_added_s": added}
    return out


def render(data: dict[str, Any], quick: bool) -> str:
    rows = ["| policy | engines | requests | failed | aborted | swaps | TTFT p50 | TTFT p99 | waited for a load | "
            "their TTFT p50 / p99 | mean wake | mean cold load |",
            "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in data["results"]:
        f = (lambda v: "-" if v is None else f"{v:.2f} s")  # noqa: E731
        rows.append(f"| {r['policy']} | {'sleep/wake' if r['sleep'] else 'stop/start'} | {r['requests']} | {r['failed']} | "
                    f"{r['aborted']} | {r['swaps']} | {r['ttft_p50']:.3f} s | {r['ttft_p99']:.2f} s | {r['waited']} | "
                    f"{r['waited_ttft_p50']:.2f} / {r['waited_ttft_p99']:.2f} s | {f(r['wake_mean'])} | {f(r['load_mean'])} |")
    by = {(r["policy"], r["sleep"]): r for r in data["results"]}
    lines = ["# Swap benchmark (issue #16)", "",
             f"{'Quick' if quick else 'Full'} run: trace of {data['trace_seconds']:.0f} s, {data['requests']} requests, "
             f"{data['switches_in_trace']} model switches between consecutive requests. "
             "See `benchmarks/scenarios/swap.py` for the setup.", "", *rows, ""]
    for sleep in (True, False):
        rs, fc = by.get(("residency", sleep)), by.get(("fcfs", sleep))
        if rs and fc and fc["swaps"]:
            cut = 1 - rs["swaps"] / fc["swaps"]
            lines.append(f"- {'sleep/wake' if sleep else 'stop/start'}: residency makes {rs['swaps']} swaps vs "
                         f"{fc['swaps']} for fcfs: {cut:.0%} fewer (target >= 50%).")
    for mode, added in data["gateway_added_s"].items():
        engine_side = "sleep, wake" if mode == "sleep" else "stop, boot-to-ready"
        lines.append(f"- Gateway-added time after a swap, {'sleep/wake' if mode == 'sleep' else 'stop/start'} "
                     f"(client TTFT minus the engine's {engine_side} and TTFT), {len(added)} swaps: "
                     f"median {percentile(added, 50) * 1000:.0f} ms, max {max(added) * 1000:.0f} ms (target < 50 ms).")
    failed = sum(r["failed"] + r["aborted"] for r in data["results"])
    lines.append(f"- Failed or aborted requests over all configurations: {failed} (target 0).")
    for r in data["results"]:
        if r["errors"]:
            lines.append(f"- errors ({r['policy']}, sleep={r['sleep']}): {'; '.join(r['errors'])}")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    import argparse

    p = argparse.ArgumentParser(prog="python -m benchmarks.scenarios.swap")
    p.add_argument("--quick", action="store_true")
    args = p.parse_args(argv)
    placement = procs.Placement.detect()
    placement.pin_self()
    bench = Bench(quick=args.quick, placement=placement)
    data = run(bench)
    procs.OUT.mkdir(parents=True, exist_ok=True)
    (procs.OUT / "swap.json").write_text(json.dumps(data, indent=1))
    out = Path(__file__).resolve().parents[1] / "SWAP.md"
    out.write_text(render(data, args.quick))
    print(out.read_text())
    return 0


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    sys.exit(main())
