"""Scenario 1, overhead: zero-latency engines, direct vs through the gateway.

Modes: non-stream; stream (16 tokens + usage) from an engine with ITL 0, which writes
the whole answer in one or two TCP writes; and stream from an engine with ITL 1 ms,
which writes each event on its own, like a real engine (the gateway then relays ~20
separate events per request). Concurrency 1, 32, 128 (the paced stream at 32 and 128).
Direct and gateway points alternate, and every point is repeated. The gateway runs in
the production configuration unless `--off`/`--no-prod` says otherwise (`bench.subsystems`).
"""

from __future__ import annotations

from typing import Any

from .. import loadgen, procs, workload
from ..context import Bench
from ..measure import Setup, point

TOKENS = 16
MODES: list[tuple[str, str, bool, tuple[int, ...]]] = [
    # (label, pool / served model, stream, concurrencies)
    ("non-stream", "bench", False, (1, 32, 128)),
    ("stream", "bench", True, (1, 32, 128)),
    ("stream, 1 write per event", "paced", True, (32, 128)),
]


def sim_args(name: str, itl_ms: float) -> list[str]:
    return ["--served-model-name", name, "--ttft-ms", "0", "--itl-ms", str(itl_ms), "--max-num-seqs", "4096"]


def run(bench: Bench) -> dict[str, Any]:
    setup = Setup(window=bench.pick(1.0, 2.0), warmup=bench.pick(0.3, 0.5), reps=bench.pick(1, 3))
    msgs = workload.messages_for(TOKENS)
    bodies = {(m, s): workload.chat_body(m, msgs, TOKENS, stream=s) for _, m, s, _ in MODES}
    points: list[dict[str, Any]] = []
    with procs.sims([sim_args("bench", 0), sim_args("paced", 1)]) as (zero, paced):
        sims = {"bench": zero, "paced": paced}
        pools = {
            "bench": {"endpoints": [zero.base_url], "max_concurrency": 4096},
            "paced": {"endpoints": [paced.base_url], "max_concurrency": 4096},
        }
        headers = bench.subsystems.headers()
        with procs.subsystems_gateway("overhead", pools, bench.placement, bench.subsystems) as gw:
            rss_idle = procs.rss_mb(gw.pid)[0]
            for rep in range(setup.reps):
                for label, model, stream, concs in MODES:
                    sim = sims[model]
                    for c in concs:
                        for via, target in (("direct", ("127.0.0.1", sim.port)), ("gateway", gw.target)):
                            body = bodies[(model, stream)]

                            def raw_for(t: loadgen.Target, body: bytes = body) -> bytes:
                                return loadgen.build_request(t, "/v1/chat/completions", body, headers)

                            server = [gw.pid] if via == "gateway" else []
                            r = bench.run(point([target], raw_for, c, stream, setup, server, [sim.pid]))
                            r.update(mode=label, via=via, rep=rep)
                            points.append(r)
                            bench.log(f"overhead rep{rep} {label:26s} c={c:<3d} {via:7s} {r['rps']:7.0f} req/s "
                                      f"p50 {r['lat_p50_ms']:.2f} ms cpu {r['server_cpu_us'] or 0:.0f} us "
                                      f"err {r['errors']}")
            rss, peak = procs.rss_mb(gw.pid)
    return {"setup": setup.__dict__, "tokens": TOKENS, "points": points, "subsystems": bench.subsystems.describe(),
            "rss_idle_mb": rss_idle, "rss_end_mb": rss, "rss_peak_mb": peak,
            "events_expected": TOKENS + 4}
