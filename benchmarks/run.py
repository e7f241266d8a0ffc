"""`python -m benchmarks.run [--quick] [--only NAME ...]`: run the scenarios, write RESULTS.md.

Starts everything it needs on 127.0.0.1 (simulated engines, gateways, redis), pins the
gateway to one CPU and this process (the load generator) plus the engines to the other,
runs bounded scenarios and writes `benchmarks/RESULTS.md` and the raw figures to
`benchmarks/out/results.json`. Every process it starts is stopped by PID on the way out.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

from . import procs
from .context import Bench

SCENARIOS = ("peers", "robustness", "overhead", "streams", "balancing", "metering", "tuning", "profile", "model",
             "cache_aware")
SUBSYSTEMS = ("auth", "metering", "metrics")


def _scenario(name: str) -> Any:
    import importlib

    return importlib.import_module(f"benchmarks.scenarios.{name}")


def _loadavg() -> str:
    import os

    return " ".join(f"{x:.1f}" for x in os.getloadavg())


def _hot_path_modules() -> dict[str, bool]:
    """Which optional subsystems the gateway will load (each adds work per request)."""
    import importlib.util

    return {m: importlib.util.find_spec(f"gateway.{m}") is not None for m in ("metrics", "ratelimit", "metering")}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.run", description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="a 1-2 minute pass: fewer points, shorter windows")
    p.add_argument("--only", nargs="+", choices=SCENARIOS, help="run only these scenarios (RESULTS.md shows them)")
    p.add_argument("--off", nargs="+", choices=SUBSYSTEMS, default=[],
                   help="turn these gateway subsystems off (default: the production configuration, all on)")
    p.add_argument("--no-prod", action="store_true", help="all of auth, metering and metrics off (--off all three)")
    p.add_argument("--out", default=str(Path(__file__).resolve().parent / "RESULTS.md"))
    p.add_argument("--json", default=str(procs.OUT / "results.json"))
    p.add_argument("--merge", action="store_true",
                   help="with --only: replace just these scenarios in the --json file of an earlier run, "
                   "keep the others (RESULTS.md says which ran later)")
    p.add_argument("--render-only", action="store_true",
                   help="rewrite RESULTS.md from the --json file of an earlier run (no measurements)")
    args = p.parse_args(argv)
    from .report import code_version, render

    placement = procs.Placement.detect()
    if args.render_only:
        Path(args.out).write_text(render(json.loads(Path(args.json).read_text()), placement))
        return 0
    placement.pin_self()
    fd_limit = procs.raise_fd_limit()
    off = set(SUBSYSTEMS if args.no_prod else args.off)
    subsystems = procs.Subsystems(**{name: name not in off for name in SUBSYSTEMS})
    bench = Bench(quick=args.quick, placement=placement, subsystems=subsystems)
    bench.log(f"placement: {placement.describe()}; open files limit {fd_limit}; gateway {subsystems.describe()}")
    results: dict[str, Any] = {"quick": args.quick, "started": time.time(), "scenarios": {},
                               "modules": _hot_path_modules(), "loadavg": {"start": _loadavg()},
                               "subsystems": subsystems.describe(), "commit": code_version()}
    earlier: dict[str, Any] | None = None
    if args.merge and Path(args.json).exists():
        earlier = json.loads(Path(args.json).read_text())
    wanted = args.only or list(SCENARIOS)
    failed = []
    for name in SCENARIOS:
        if name not in wanted:
            continue
        t0 = time.monotonic()
        bench.log(f"== {name}")
        try:
            results["scenarios"][name] = _scenario(name).run(bench)
        except Exception as e:  # one broken scenario must not lose the others' figures
            import traceback

            traceback.print_exc()
            results["scenarios"][name] = {"error": f"{type(e).__name__}: {e}"}
            failed.append(name)
        results["scenarios"][name]["elapsed_s"] = time.monotonic() - t0
    results["seconds"] = time.monotonic() - bench.started
    results["loadavg"]["end"] = _loadavg()
    results["notes"] = bench.notes
    if earlier is not None:
        # Keep the earlier run's header and scenarios; note what was re-run, when, under what load.
        for name, res in results["scenarios"].items():
            earlier["scenarios"][name] = res
            earlier.setdefault("reruns", []).append(
                {"scenario": name, "started": results["started"], "loadavg": results["loadavg"],
                 "subsystems": results["subsystems"], "quick": args.quick})
        results = earlier
    procs.OUT.mkdir(parents=True, exist_ok=True)
    Path(args.json).write_text(json.dumps(results, indent=1, default=str))
    Path(args.out).write_text(render(results, placement))
    bench.log(f"wrote {args.out} ({results['seconds']:.0f} s){'; FAILED: ' + ', '.join(failed) if failed else ''}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
