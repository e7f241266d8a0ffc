"""`python -m benchmarks.cachesim [--quick]`: issue #15's table in simulated time.

For each workload: the pool's capacity (requests/s speed_aware completes with every
session back to back, no think time), then at 50/70/90% of it (Poisson session arrivals,
the same seeded sessions for every policy): cache_aware, speed_aware, least_outstanding,
round_robin and the oracle behind one gateway at 70%, and cache_aware and speed_aware
behind one and two gateways at every load (two: each request to one of them at random,
the worst case for a per-replica index).
Rewrites its section of benchmarks/RESULTS.md and benchmarks/out/cachesim.json.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import json
import sys
import time
from pathlib import Path
from typing import Any

from ..scenarios.cache_aware import targets
from .engine import EngineSpec
from .run import simulate, summarize
from .workload import WORKLOADS, Session, sessions

ENGINES = 4
SEED = 7
PLAN = [("cache_aware", 1), ("speed_aware", 1), ("least_outstanding", 1), ("round_robin", 1), ("oracle", 1),
        ("cache_aware", 2), ("speed_aware", 2)]
# At the other loads only the new policy and the old default: the targets are read at
# 70%, and more does not fit the CPU time of a shared machine.
SHORT_PLAN = [("cache_aware", 1), ("speed_aware", 1)]
BEGIN, END = "<!-- cachesim:begin -->", "<!-- cachesim:end -->"


def capacity(workload: str, spec: EngineSpec, seconds: float, engines: int = ENGINES) -> float:
    """Requests/s completed by speed_aware with sessions back to back (no think time)."""
    base = sessions(workload, 1000.0, 10.0, seed=99)[: engines * spec.max_num_seqs * 2]
    closed = [Session(0.0, [dataclasses.replace(t, think=0.0) for t in s.turns], s.hashes) for s in base]
    warm = seconds / 3
    samples = asyncio.run(simulate(closed, "speed_aware", 1, spec, engines, seed=1, measure_from=warm,
                                   closed_loop_until=seconds))
    done = [x for x in samples if x.arrive + x.e2e <= seconds]
    return len(done) / (seconds - warm)


def run(workloads: list[str], loads: list[float], window: float, warm: float, log: Any,
        known: dict[str, float] | None = None, save: Any = None, engines: int = ENGINES) -> dict[str, Any]:
    """`known`: capacities measured before (a run is deterministic: the same code and
    seeds give the same figure); `save(out)` after every run (partial results survive)."""
    spec = EngineSpec()
    out: dict[str, Any] = {"engines": engines, "spec": dataclasses.asdict(spec), "window_s": window, "warm_s": warm,
                           "capacity": {}, "runs": []}
    for w in workloads:
        cap = (known or {}).get(w) or capacity(w, spec, 300.0, engines)
        out["capacity"][w] = cap
        log(f"cachesim: {w}: capacity {cap:.1f} req/s (speed_aware, sessions back to back)")
        for load in loads:
            sess = sessions(w, load * cap, window, seed=SEED)
            for policy, replicas in PLAN if load == 0.7 else SHORT_PLAN:
                t0 = time.monotonic()
                st = summarize(asyncio.run(simulate(sess, policy, replicas, spec, engines, seed=3, measure_from=warm)),
                               engines)
                st.update(workload=w, load=load, policy=policy, replicas=replicas, rate=load * cap,
                          sessions=len(sess), errors=0)
                out["runs"].append(st)
                if save is not None:
                    save(out)
                log(f"cachesim: {w} {load:.0%} {policy:17s} x{replicas} TTFT {st['ttft_mean_s']:.3f}/"
                    f"{st['ttft_p99_s']:.3f} s e2e {st['e2e_mean_s']:.2f}/{st['e2e_p99_s']:.2f} s hit "
                    f"{st['hit_rate']:.1%} spread {st['spread']:.2f} n {st['n']} ({time.monotonic() - t0:.0f} s)")
    out["targets"] = targets(out["runs"])
    return out


def _f(x: float) -> str:
    return f"{x:.3f}" if x == x else "n/a"


def section(res: dict[str, Any]) -> str:
    sp = res["spec"]
    rows = ["| workload | load | policy | gateways | TTFT mean s | TTFT p99 s | e2e mean s | e2e p99 s | hit rate "
            "| spread | requests per engine |", "|" + "---|" * 11]
    for r in res["runs"]:
        rows.append(f"| {r['workload']} | {r['load']:.0%} | {r['policy']} | {r['replicas']} | {_f(r['ttft_mean_s'])} "
                    f"| {_f(r['ttft_p99_s'])} | {_f(r['e2e_mean_s'])} | {_f(r['e2e_p99_s'])} | {r['hit_rate']:.1%} "
                    f"| {r['spread']:.2f} | {' / '.join(map(str, r['share']))} |")
    tg = ["| target | met | figures |", "|---|---|---|"]
    for t in res["targets"]:
        tg.append(f"| {t['target']} | {'yes' if t['met'] else 'NO'} | {t['detail']} |")
    caps = ", ".join(f"{w} {c:.1f} req/s" for w, c in res["capacity"].items())
    return f"""## Cache-aware routing in simulated time (issue #15)

`python -m benchmarks.cachesim` ({res['elapsed_s']:.0f} s of CPU in all, {res['window_s']:.0f} simulated seconds of arrivals per run;
deterministic: the same seeds give the same figures). The gateway's own balancer classes
in front of {res['engines']} GPU-like engines (`benchmarks/cachesim/engine.py`: continuous batching,
chunked prefill, the simulator's prefix cache): an 8B model on one 80 GB A100 each,
prefill {sp['prefill_s_per_token'] * 1000:.2f} ms per uncached prompt token (a 10k-token miss: ~1 s),
decode steps {sp['step_base_s'] * 1000:.0f} ms + {sp['kv_read_s_per_token'] * 1e6:.2f} us per token of context,
KV cache {sp['kv_tokens']:,} tokens, max_num_seqs {sp['max_num_seqs']}, max_num_batched_tokens {sp['max_batched_tokens']}.
Capacity (speed_aware, sessions back to back): {caps}. Load = share of that capacity
offered as Poisson session arrivals over {res['window_s']:.0f} s; figures for requests arriving after
{res['warm_s']:.0f} s (caches and queues warm). Hit rate: cached prompt tokens / prompt tokens as the
engines count them. Spread: the busiest engine's requests over the mean. With 2 gateways
each request goes to one of them at random; cache_aware's replicas share conversation
records (Redis in production, an in-memory stand-in here).

{chr(10).join(tg)}

{chr(10).join(rows)}
"""


def write(res: dict[str, Any]) -> Path:
    root = Path(__file__).resolve().parents[1]
    (root / "out").mkdir(exist_ok=True)
    (root / "out" / "cachesim.json").write_text(json.dumps(res, indent=1))
    path = root / "RESULTS.md"
    text = path.read_text() if path.exists() else ""
    block = f"{BEGIN}\n{section(res)}{END}\n"
    if BEGIN in text and END in text:
        text = text[: text.index(BEGIN)] + block + text[text.index(END) + len(END) + 1:]
    else:
        text = text.rstrip("\n") + "\n\n" + block
    path.write_text(text)
    return path


def merge(parts: list[dict[str, Any]]) -> dict[str, Any]:
    """Runs of the same settings split over processes (e.g. two workloads each), as one."""
    res = dict(parts[0])
    res["capacity"] = {w: c for p in parts for w, c in p["capacity"].items()}
    res["runs"] = [r for p in parts for r in p["runs"]]
    res["elapsed_s"] = sum(p["elapsed_s"] for p in parts)
    res["targets"] = targets(res["runs"])
    return res


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.cachesim")
    p.add_argument("--quick", action="store_true", help="70%% load only, shorter window")
    p.add_argument("--workloads", nargs="+", choices=WORKLOADS, default=list(WORKLOADS))
    p.add_argument("--loads", nargs="+", type=float)
    p.add_argument("--window", type=float, help="simulated seconds of arrivals (default 600)")
    p.add_argument("--warm", type=float, help="simulated seconds before figures count (default 200)")
    p.add_argument("--capacity", nargs="+", metavar="WORKLOAD=REQ/S", default=[],
                   help="capacities measured by an earlier run of the same code, not measured again")
    p.add_argument("--json", type=Path, help="write this part's figures here; RESULTS.md untouched")
    p.add_argument("--merge", nargs="+", type=Path, help="write RESULTS.md from parts written with --json")
    p.add_argument("--no-write", action="store_true", help="print only; RESULTS.md untouched")
    p.add_argument("--engines", type=int, default=ENGINES,
                   help=f"engines behind the gateway (default {ENGINES}; RESULTS.md's table is for {ENGINES})")
    args = p.parse_args(argv)
    if args.merge:
        res = merge([json.loads(f.read_text()) for f in args.merge])
    else:
        loads = args.loads or ([0.7] if args.quick else [0.5, 0.7, 0.9])
        window = args.window or 600.0
        warm = args.warm or 200.0
        known = {k: float(v) for k, v in (c.split("=") for c in args.capacity)}
        t0 = time.process_time()

        def save(out: dict[str, Any]) -> None:
            if args.json:
                args.json.write_text(json.dumps({**out, "elapsed_s": time.process_time() - t0, "targets": []}))

        res = run(args.workloads, loads, window, warm, lambda m: print(m, file=sys.stderr, flush=True), known, save,
                  args.engines)
        res["elapsed_s"] = time.process_time() - t0
    for t in res["targets"]:
        print(f"{'met' if t['met'] else 'NOT met'}: {t['target']}: {t['detail']}", file=sys.stderr)
    if args.json:
        args.json.write_text(json.dumps(res, indent=1))
    elif not args.no_write:
        print(f"wrote {write(res)}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
