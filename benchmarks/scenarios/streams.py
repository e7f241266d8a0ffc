"""Scenario 2, many streams: 1,000 concurrent slow streams (ITL 50 ms) through the gateway.

Each client connection streams back to back (100 tokens, ~5 s each), so about 1,000
streams are open at every moment of the window and ~20,000 events/s cross the gateway.
Reported: RSS (sampled every second, and the kernel's peak), open descriptors, relay
rate, TTFT through the gateway vs the same load sent directly, errors (must be 0).
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

from .. import loadgen, procs, workload
from ..context import Bench
from ..measure import Setup, point

STREAMS = 1000
TOKENS = 100
ITL_MS = 50
SIMS = 4


def run(bench: Bench) -> dict[str, Any]:
    window = bench.pick(7.0, 60.0)
    direct_window = bench.pick(7.0, 10.0)  # longer than a stream (~5 s), or no stream fits in it
    ramp = bench.pick(2.0, 5.0)
    warmup = bench.pick(1.0, 2.0)
    msgs = workload.messages_for(TOKENS)
    body = workload.chat_body("streams", msgs, TOKENS, stream=True)
    per_sim = STREAMS // SIMS + 64
    args = ["--served-model-name", "streams", "--ttft-ms", "20", "--itl-ms", str(ITL_MS), "--max-num-seqs",
            str(per_sim)]
    out: dict[str, Any] = {"streams": STREAMS, "tokens": TOKENS, "itl_ms": ITL_MS, "window_s": window, "sims": SIMS,
                           "subsystems": bench.subsystems.describe()}

    def raw_for(t: loadgen.Target) -> bytes:
        return loadgen.build_request(t, "/v1/chat/completions", body, bench.subsystems.headers())

    with procs.sims([args] * SIMS) as sims:
        sim_pids = [s.pid for s in sims]
        pools = {"streams": {"endpoints": [s.base_url for s in sims], "max_concurrency": per_sim,
                             "queue": "{max_size: 4096}"}}
        with procs.subsystems_gateway("streams", pools, bench.placement, bench.subsystems) as gw:
            out["rss_idle_mb"] = procs.rss_mb(gw.pid)[0]
            samples: list[tuple[float, float, int]] = []

            async def sampler(stop: asyncio.Event) -> None:
                while not stop.is_set():
                    samples.append((time.monotonic(), procs.rss_mb(gw.pid)[0], procs.open_fds(gw.pid)))
                    try:
                        await asyncio.wait_for(stop.wait(), 1.0)
                    except TimeoutError:
                        pass

            async def through_gateway() -> dict[str, Any]:
                stop = asyncio.Event()
                task = asyncio.get_running_loop().create_task(sampler(stop))
                r = await point([gw.target], raw_for, STREAMS, True, Setup(window, warmup, 1), [gw.pid], sim_pids,
                                ramp=ramp)
                stop.set()
                await task
                return r

            bench.log(f"streams: {STREAMS} streams through the gateway for {window:.0f} s")
            out["gateway"] = bench.run(through_gateway())
            out["rss_samples"] = [(round(t - samples[0][0], 1), round(m, 1), fds) for t, m, fds in samples]
            out["rss_end_mb"], out["rss_peak_mb"] = procs.rss_mb(gw.pid)
        if not bench.quick:
            # The same load on the aiohttp fallback client, for a shorter window: what the
            # gateway's own client saves at this load.
            args = ["--upstream", "aiohttp"]
            with procs.subsystems_gateway("streams-aiohttp", pools, bench.placement, bench.subsystems,
                                          launch_args=args) as gw:
                bench.log(f"streams: {STREAMS} streams through the gateway with {' '.join(args)}")
                r = bench.run(point([gw.target], raw_for, STREAMS, True, Setup(15.0, warmup, 1), [gw.pid], sim_pids,
                                    ramp=ramp))
                r["rss_end_mb"], r["rss_peak_mb"] = procs.rss_mb(gw.pid)
                r["args"], r["window_s"] = args, 15.0
                out["aiohttp"] = r
        targets = [("127.0.0.1", s.port) for s in sims]
        bench.log(f"streams: {STREAMS} streams direct for {direct_window:.0f} s")
        out["direct"] = bench.run(point(targets, raw_for, STREAMS, True, Setup(direct_window, warmup, 1), [], sim_pids,
                                        ramp=ramp))
    g, d = out["gateway"], out["direct"]
    bench.log(f"streams: gateway {g['events_per_req'] * g['completed'] / window:.0f} events/s, errors {g['errors']}, "
              f"TTFT p50 {g['ttfc_p50_ms']:.1f} ms vs direct {d['ttfc_p50_ms']:.1f} ms, peak RSS "
              f"{out['rss_peak_mb']:.0f} MB")
    return out
