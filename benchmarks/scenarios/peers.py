"""Scenario "peers": the gateway beside vllm-router, sglang-router and nginx, in one run.

Issue #13: figures that cannot flatter us. Every proxy sits in front of the same simulated
engine, pinned to the same CPU (`taskset`, the gateway's CPU), and is measured in the
same repetitions, with the order of the proxies rotated from one repetition to the next.
The gateway runs in the production configuration (API key, metering to SQLite, metrics;
`--off`/`--no-prod` change that), and in a full run a second gateway with all three off
shows what they cost. Modes:

- non-stream, engine `--ttft-ms 0 --itl-ms 0`, concurrency 1 and 32;
- 16-token stream from an engine with `--itl-ms 1`, which writes each SSE event on its own
  (20 events: role, 16 tokens, finish, usage, `[DONE]`), concurrency 1 and 32.

Per point: req/s, CPU per request of the proxy's process tree (all threads; nginx's master
and worker), latency and time-to-first-chunk p50/p99. The report gives each figure as a
ratio to vllm-router's in the same repetition (median over repetitions, min-max).

Latency at concurrency 1 moves with whatever else runs on the shared machine, more than
the fraction of a millisecond a proxy adds; so for non-stream requests it is also read
interleaved (`measure.interleaved`): thousands of rounds, each sending one request to
every proxy and to the engine directly, added latency taken per round.
"""

from __future__ import annotations

from typing import Any

from .. import loadgen, peers, procs, workload
from ..context import Bench
from ..measure import Setup, interleaved, point
from .overhead import TOKENS, sim_args

MODES: list[tuple[str, str, float, bool, tuple[int, ...]]] = [
    # (label, served model, engine ITL ms, stream, concurrencies)
    ("non-stream", "bench", 0, False, (1, 32)),
    ("stream, 1 write per event", "paced", 1, True, (1, 32)),
]
GATEWAY = "gateway"
GATEWAY_BARE = "gateway, auth/metering/metrics off"
BASELINE = "vllm-router"
INTERLEAVED_ROUNDS = 3000


def _targets(bench: Bench, sim: Any, model: str, out: dict[str, Any], stack: list[Any]) -> dict[str, Any]:
    """Start every proxy in front of `sim`; returns name -> (target, pids). Missing peers are noted."""
    pools = {model: {"endpoints": [sim.base_url], "max_concurrency": 4096}}
    found: dict[str, Any] = {"direct": (("127.0.0.1", sim.port), [])}
    gw = procs.subsystems_gateway(f"peers-gw-{model}", pools, bench.placement, bench.subsystems).start()
    stack.append(gw)
    found[GATEWAY] = (gw.target, peers.tree_pids(gw.pid))
    if not bench.quick and bench.subsystems != procs.BARE:
        bare = procs.subsystems_gateway(f"peers-gw-bare-{model}", pools, bench.placement, procs.BARE).start()
        stack.append(bare)
        found[GATEWAY_BARE] = (bare.target, peers.tree_pids(bare.pid))
    for name, factory in peers.FACTORIES.items():
        p = factory(sim.port)
        if isinstance(p, str):
            out["missing"][name] = p
            continue
        p.name = f"{p.name}-{model}"
        p.start(bench.placement)
        stack.append(p)
        found[name] = (p.target, p.pids())
        out["versions"][name] = p.version
    # The yardstick: the least any Python proxy on our stack spends (benchmarks/floorproxy.py).
    floor = peers.python_floor(sim.port)
    floor.name = f"{floor.name}-{model}"
    floor.start(bench.placement)
    stack.append(floor)
    found[peers.PYTHON_FLOOR] = (floor.target, floor.pids())
    return found


def run(bench: Bench) -> dict[str, Any]:
    setup = Setup(window=bench.pick(1.0, 2.0), warmup=bench.pick(0.3, 0.5), reps=bench.pick(1, 3))
    msgs = workload.messages_for(TOKENS)
    headers = bench.subsystems.headers()
    out: dict[str, Any] = {"setup": setup.__dict__, "tokens": TOKENS, "points": [], "missing": {}, "versions": {},
                           "subsystems": bench.subsystems.describe(), "rss_mb": {}, "baseline": BASELINE}
    for label, model, itl, stream, concs in MODES:
        body = workload.chat_body(model, msgs, TOKENS, stream=stream)

        def raw_for(t: loadgen.Target, body: bytes = body) -> bytes:
            return loadgen.build_request(t, "/v1/chat/completions", body, headers)

        with procs.sims([sim_args(model, itl)]) as (sim,):
            stack: list[Any] = []
            try:
                targets = _targets(bench, sim, model, out, stack)
                names = list(targets)
                for rep in range(setup.reps):
                    order = names[rep % len(names):] + names[:rep % len(names)]
                    for c in concs:
                        for name in order:
                            target, pids = targets[name]
                            r = bench.run(point([target], raw_for, c, stream, setup, pids, [sim.pid]))
                            r.update(mode=label, via=name, rep=rep)
                            out["points"].append(r)
                            bench.log(f"peers rep{rep} {label:26s} c={c:<3d} {name:14.14s} {r['rps']:7.0f} req/s "
                                      f"p50 {r['lat_p50_ms']:.2f} ms cpu {r['server_cpu_us'] or 0:.0f} us "
                                      f"err {r['errors']}")
                if not stream:
                    rounds = bench.pick(300, INTERLEAVED_ROUNDS)
                    bench.log(f"peers {label}: c=1 interleaved, {rounds} rounds")
                    out["interleaved_c1"] = bench.run(interleaved({n: t for n, (t, _) in targets.items()},
                                                                  raw_for, rounds))
                for name, (_, pids) in targets.items():
                    if pids:
                        out["rss_mb"].setdefault(name, {})[label] = sum(_rss(p) for p in pids)
            finally:
                for proc in reversed(stack):
                    proc.stop()
    return out


def _rss(pid: int) -> float:
    try:
        return procs.rss_mb(pid)[0]
    except OSError:
        return 0.0
