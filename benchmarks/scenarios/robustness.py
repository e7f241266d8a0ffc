"""Scenario "robustness": what the server layer does with clients that misbehave (issue #13).

What the server layer does with each kind; the targets:
(a) slowloris: 200 connections send part of a request's headers, then nothing, and are
    held for `hold` seconds (50 more send the headers and part of a body). Target: closed
    after a header/body read timeout. Sent to the gateway and to the peers (same engine).
(b) never-reading streams: 70 clients ask a pool of 64 slots (`max_concurrency: 64`) for
    an 8 MiB stream (benchmarks/fatengine.py: 128 events of 64 KiB, more than every buffer
    on the way, so the writes stall; a reading client gets it in milliseconds) and never
    read. Meanwhile 4 normal clients send short non-stream requests to the same pool, cut
    after a timeout. Target: their p99 stays under 2x the p99 measured before the
    non-readers came (each non-reader is cut once its bounded relay buffer overflows,
    which aborts its engine request and frees its slot).
(c) malformed HTTP: a bad Content-Length, an unknown method, a bad chunk size, raw bytes.
    Target: a 400 with an OpenAI-shaped error body. Sent to the gateway and the peers.
"""

from __future__ import annotations

import asyncio
import json
from dataclasses import asdict
from typing import Any

from .. import loadgen, peers, procs, robust, workload
from ..context import Bench
from ..fatengine import EVENT_BYTES, EVENTS, FatEngineProcess

SLOWLORIS = 200
SLOW_BODY = 50
DEAF = 70
SLOTS = 64
NORMAL_CONCURRENCY = 4


def _partial_headers(headers: dict[str, str]) -> bytes:
    lines = ["POST /v1/chat/completions HTTP/1.1", "Host: 127.0.0.1"] + [f"{k}: {v}" for k, v in headers.items()]
    return ("\r\n".join(lines) + "\r\nContent-Type: appl").encode()


def _partial_body(headers: dict[str, str]) -> bytes:
    lines = ["POST /v1/chat/completions HTTP/1.1", "Host: 127.0.0.1", "Content-Type: application/json",
             "Content-Length: 1000"] + [f"{k}: {v}" for k, v in headers.items()]
    return ("\r\n".join(lines) + "\r\n\r\n" + '{"model": "robust", "mess').encode()


def _lat(t: robust.Timed) -> dict[str, Any]:
    return {"requests": len(t.latencies), "ok": t.ok, "failed": t.failed,
            "p50_ms": robust.percentile(t.latencies, 50) * 1e3, "p99_ms": robust.percentile(t.latencies, 99) * 1e3,
            "max_ms": max(t.latencies, default=float("nan")) * 1e3}


async def _slowloris_all(targets: dict[str, loadgen.Target], headers: dict[str, str], hold: float,
                         probe: loadgen.Target, probe_raw: bytes) -> dict[str, Any]:
    """Every target at once (idle connections cost next to nothing), plus a probe of normal
    requests to the gateway while they are held."""
    kinds = {"partial headers": (_partial_headers(headers), SLOWLORIS),
             "partial body": (_partial_body(headers), SLOW_BODY)}
    jobs = {(name, kind): robust.slowloris(t, first, n, hold)
            for name, t in targets.items() for kind, (first, n) in kinds.items()}

    async def probe_later() -> robust.Timed:
        await asyncio.sleep(min(2.0, hold / 3))
        return await robust.timed_requests(probe, probe_raw, 1, min(3.0, hold / 3), 5.0)

    results = await asyncio.gather(*jobs.values(), probe_later())
    out: dict[str, Any] = {}
    for (name, kind), held in zip(jobs, results[:-1], strict=True):
        out.setdefault(name, {})[kind] = asdict(held)
    out["_probe"] = _lat(results[-1])
    return out


async def _deaf_run(bench: Bench, gw: procs.Gateway, engine: FatEngineProcess,
                    headers: dict[str, str]) -> dict[str, Any]:
    normal = loadgen.build_request(gw.target, "/v1/chat/completions",
                                   json.dumps({"model": "fat", "messages": [{"role": "user", "content": "hi"}],
                                               "max_tokens": 1}).encode(), headers)
    big = loadgen.build_request(gw.target, "/v1/chat/completions",
                                json.dumps({"model": "fat", "messages": [{"role": "user", "content": "hi"}],
                                            "stream": True}).encode(), headers)
    window, timeout = bench.pick(4.0, 10.0), bench.pick(4.0, 10.0)
    out: dict[str, Any] = {"deaf": DEAF, "slots": SLOTS, "stream_mb": EVENT_BYTES * EVENTS / 2**20,
                           "window_s": window, "timeout_s": timeout, "concurrency": NORMAL_CONCURRENCY}
    out["unloaded"] = _lat(await robust.timed_requests(gw.target, normal, NORMAL_CONCURRENCY, window / 2, timeout))
    # Control: one client that reads the same stream; how long a stream takes when read.
    readers = await robust.timed_requests(gw.target, big, 1, 1.0, timeout)
    out["reading_stream_ms"] = robust.percentile(readers.latencies, 50) * 1e3
    deaf = await robust.open_deaf(gw.target, big, DEAF)
    await asyncio.sleep(2.0)  # let their writes stall
    out["engine_streaming_before"] = engine.streaming()
    out["loaded"] = _lat(await robust.timed_requests(gw.target, normal, NORMAL_CONCURRENCY, window, timeout))
    out["engine_streaming_after"] = engine.streaming()
    out["deaf_closed_by_server"] = sum(d.lost for d in deaf)
    out["gateway_rss_mb"] = procs.rss_mb(gw.pid)[0]
    for d in deaf:
        d.transport.close()
    await asyncio.sleep(0.5)
    out["after_close"] = _lat(await robust.timed_requests(gw.target, normal, NORMAL_CONCURRENCY, 2.0, timeout))
    out["engine_streaming_end"] = engine.streaming()
    u, lo = out["unloaded"]["p99_ms"], out["loaded"]["p99_ms"]
    out["p99_ratio"] = lo / u if u else float("nan")
    return out


def run(bench: Bench) -> dict[str, Any]:
    hold = bench.pick(6.0, 30.0)
    headers = bench.subsystems.headers()
    out: dict[str, Any] = {"hold_s": hold, "slowloris": SLOWLORIS, "slow_body": SLOW_BODY,
                           "subsystems": bench.subsystems.describe(), "missing": {}}
    sim_args = ["--served-model-name", "robust", "--ttft-ms", "0", "--itl-ms", "0", "--max-num-seqs", "4096",
                ]
    with procs.sims([sim_args]) as (sim,):
        pools = {"robust": {"endpoints": [sim.base_url], "max_concurrency": SLOTS}}
        stack: list[Any] = []
        try:
            gw = procs.subsystems_gateway("robustness", pools, bench.placement, bench.subsystems).start()
            stack.append(gw)
            targets: dict[str, loadgen.Target] = {"gateway": gw.target}
            for name, factory in peers.FACTORIES.items():
                p = factory(sim.port)
                if isinstance(p, str):
                    out["missing"][name] = p
                    continue
                p.name = f"{p.name}-robust"
                stack.append(p.start(bench.placement))
                targets[name] = p.target
            out["malformed"] = {name: {case: asdict(bench.run(robust.malformed(t, raw)))
                                       for case, raw in robust.MALFORMED.items()} for name, t in targets.items()}
            bench.log(f"robustness: malformed -> gateway {[a['status'] for a in out['malformed']['gateway'].values()]}")
            probe_raw = loadgen.build_request(gw.target, "/v1/chat/completions",
                                              workload.chat_body("robust", workload.messages_for(16), 16), headers)
            bench.log(f"robustness: {SLOWLORIS}+{SLOW_BODY} slowloris connections per proxy, held {hold:.0f} s")
            out["held"] = bench.run(_slowloris_all(targets, headers, hold, gw.target, probe_raw))
            g = out["held"]["gateway"]["partial headers"]
            bench.log(f"robustness: gateway closed {g['closed']}/{g['opened']} slowloris connections")
            bench.log(f"robustness: {DEAF} never-reading streams on {SLOTS} slots")
            with FatEngineProcess("fat") as engine:
                fat_pools = {"fat": {"endpoints": [engine.base_url], "max_concurrency": SLOTS}}
                with procs.subsystems_gateway("robustness-deaf", fat_pools, bench.placement,
                                              bench.subsystems) as deaf_gw:
                    out["deaf"] = bench.run(_deaf_run(bench, deaf_gw, engine, headers))
            d = out["deaf"]
            bench.log(f"robustness: normal p99 {d['unloaded']['p99_ms']:.1f} ms unloaded, "
                      f"{d['loaded']['p99_ms']:.1f} ms with non-readers ({d['p99_ratio']:.1f}x), "
                      f"failed {d['loaded']['failed']}")
        finally:
            for p in reversed(stack):
                p.stop()
    return out
