"""One measured point (a closed-loop run) and how repeated points are summarised."""

from __future__ import annotations

import math
import os
import statistics
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from . import loadgen
from .procs import CpuMeter


@dataclass(frozen=True)
class Setup:
    window: float  # seconds measured per point
    warmup: float
    reps: int


async def point(targets: Sequence[loadgen.Target], raw_for: Any, concurrency: int, stream: bool, setup: Setup,
                server_pids: Sequence[int] = (), client_pids: Sequence[int] = (), ramp: float = 0.0) -> dict[str, Any]:
    """Run one closed-loop point; CPU of `server_pids` (the gateway) and of the client side
    (this process + `client_pids`, e.g. the engines) is read exactly at the window's edges."""
    meter = CpuMeter(*server_pids, os.getpid(), *client_pids)
    w = await loadgen.closed_loop(targets, raw_for, concurrency, setup.window, setup.warmup, stream,
                                  meter.start, meter.stop, ramp=ramp)
    n = max(1, w.completed)
    lat = [s.latency for s in w.samples]
    ttfc = [s.ttfc for s in w.samples]
    ns = len(server_pids)
    return {
        "concurrency": concurrency,
        "completed": w.completed,
        "rps": w.completed / w.seconds,
        "errors": w.errors,
        "error_examples": w.error_examples,
        "lat_p50_ms": loadgen.percentile(lat, 50) * 1e3,
        "lat_p99_ms": loadgen.percentile(lat, 99) * 1e3,
        "ttfc_p50_ms": loadgen.percentile(ttfc, 50) * 1e3,
        "ttfc_p99_ms": loadgen.percentile(ttfc, 99) * 1e3,
        "events_per_req": w.events / n,
        "server_cpu_us": sum(meter.seconds[:ns]) / n * 1e6 if ns else None,
        # Of it, in the kernel (sockets, epoll): what no user-space saving touches.
        "server_kernel_cpu_us": sum(meter.kernel_seconds[:ns]) / n * 1e6 if ns else None,
        "server_cpu_util": sum(meter.seconds[:ns]) / w.seconds if ns else None,
        "client_cpu_us": sum(meter.seconds[ns:]) / n * 1e6,
        "client_cpu_util": sum(meter.seconds[ns:]) / w.seconds,
    }


async def interleaved(targets: dict[str, loadgen.Target], raw_for: Any, rounds: int, warmup: int = 50,
                      blocks: int = 5) -> dict[str, Any]:
    """Latency at concurrency 1, read so that machine noise cancels out.

    One keep-alive connection per target; each round sends one request to every target in
    turn (the order rotates every round), so all targets see the same moments of the
    shared machine. Per target: the median latency, and the median over rounds of its
    latency minus the direct connection's in the same round ("added"), overall and per
    block of rounds (the spread shows how steady the reading is)."""
    names = list(targets)
    conns = {n: await loadgen.connect(t) for n, t in targets.items()}
    raws = {n: raw_for(t) for n, t in targets.items()}
    lat: dict[str, list[float]] = {n: [] for n in names}
    errors = dict.fromkeys(names, 0)
    try:
        for r in range(warmup + rounds):
            k = r % len(names)
            for n in names[k:] + names[:k]:
                c = conns[n]
                if c.closed:
                    c = conns[n] = await loadgen.connect(targets[n])
                s = await c.request(raws[n])
                if r < warmup:
                    continue
                if not s.ok:
                    errors[n] += 1
                lat[n].append(s.latency if s.ok else float("nan"))
    finally:
        for c in conns.values():
            c.close()
    out: dict[str, Any] = {"rounds": rounds, "blocks": blocks, "targets": {}}
    direct = lat.get("direct")
    for n in names:
        ok = [x for x in lat[n] if not math.isnan(x)]
        row: dict[str, Any] = {"p50_ms": loadgen.percentile(ok, 50) * 1e3, "p99_ms": loadgen.percentile(ok, 99) * 1e3,
                               "errors": errors[n]}
        if direct is not None and n != "direct":
            diff = [(a - b) * 1e3 for a, b in zip(lat[n], direct, strict=True) if not (math.isnan(a) or math.isnan(b))]
            size = max(1, len(diff) // blocks)
            row["added_p50_ms"] = statistics.median(diff) if diff else float("nan")
            row["added_p50_blocks_ms"] = [statistics.median(diff[i:i + size]) for i in range(0, len(diff), size)
                                          if len(diff[i:i + size]) >= size // 2]
        out["targets"][n] = row
    return out


def summary(values: Sequence[float | None]) -> dict[str, float]:
    """Median and range of repeated measurements (None/NaN dropped)."""
    v = [x for x in values if x is not None and not math.isnan(x)]
    if not v:
        return {"med": float("nan"), "min": float("nan"), "max": float("nan"), "n": 0}
    return {"med": statistics.median(v), "min": min(v), "max": max(v), "n": len(v)}


def fmt(s: dict[str, float], digits: int = 0, spread: bool = True) -> str:
    """`med (min-max)`; just the value when there is one repetition."""
    if s["n"] == 0:
        return "n/a"
    f = f"{{:.{digits}f}}"
    if not spread or s["n"] == 1 or s["min"] == s["max"]:
        return f.format(s["med"])
    return f"{f.format(s['med'])} ({f.format(s['min'])}-{f.format(s['max'])})"
