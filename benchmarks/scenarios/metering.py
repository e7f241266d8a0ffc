"""Scenario 4, metering cost: the overhead scenario's c=32 points with metering off and on.

Three gateways on the same engine, otherwise as configured for the run (production by
default: API key, metrics on) (all pinned to the gateway CPU, measured one at a
time, points interleaved): metering disabled (memory store), metering to SQLite (a file
in the run directory), metering to Redis (a throwaway redis-server on the client CPU).
The ledger is checked afterwards: SQLite's row count against the requests served.
"""

from __future__ import annotations

import sqlite3
from dataclasses import replace
from typing import Any

from .. import loadgen, procs, workload
from ..context import Bench
from ..measure import Setup, point
from .overhead import TOKENS, sim_args

CONCURRENCY = 32


def _gateway_available() -> tuple[bool, str]:
    try:
        import gateway.metering  # noqa: F401
    except ImportError as e:
        return False, f"gateway.metering cannot be imported ({e})"
    return True, ""


def run(bench: Bench) -> dict[str, Any]:
    ok, why = _gateway_available()
    if not ok:
        return {"skipped": why}
    setup = Setup(window=bench.pick(1.0, 2.0), warmup=bench.pick(0.3, 0.5), reps=bench.pick(1, 3))
    msgs = workload.messages_for(TOKENS)
    modes = {"non-stream": False, "stream": True}
    headers = bench.subsystems.headers()
    out: dict[str, Any] = {"setup": setup.__dict__, "concurrency": CONCURRENCY, "points": [], "notes": [],
                           "subsystems": bench.subsystems.describe()}
    redis: procs.Redis | None = None
    if procs.Redis.available():
        redis = procs.Redis().start()
    else:
        out["notes"].append("redis-server is not installed: the Redis store was skipped")
    try:
        with procs.sims([sim_args("bench", 0)]) as (sim,):
            pool = {"bench": {"endpoints": [sim.base_url], "max_concurrency": 4096}}
            # Everything else as configured for the run (production by default: key, metrics).
            on, off = replace(bench.subsystems, metering=True), replace(bench.subsystems, metering=False)
            gws = {"off": procs.subsystems_gateway("metering-off", pool, bench.placement, off),
                   "sqlite": procs.subsystems_gateway("metering-sqlite", pool, bench.placement, on)}
            if redis is not None:
                gws["redis"] = procs.subsystems_gateway("metering-redis", pool, bench.placement, on, store=redis.url)
            for g in gws.values():
                g.start()
            try:
                served = dict.fromkeys(gws, 0)
                for rep in range(setup.reps):
                    for mode, stream in modes.items():
                        body = workload.chat_body("bench", msgs, TOKENS, stream=stream)
                        for name, g in gws.items():
                            def raw_for(t: loadgen.Target, body: bytes = body) -> bytes:
                                return loadgen.build_request(t, "/v1/chat/completions", body, headers)

                            before = sim.state()["requests_total"]
                            r = bench.run(point([g.target], raw_for, CONCURRENCY, stream, setup, [g.pid], [sim.pid]))
                            served[name] += sim.state()["requests_total"] - before
                            r.update(mode=mode, store=name, rep=rep)
                            out["points"].append(r)
                            bench.log(f"metering rep{rep} {mode:10s} {name:6s} {r['rps']:6.0f} req/s "
                                      f"cpu {r['server_cpu_us']:.0f} us err {r['errors']}")
                for name, g in gws.items():
                    out.setdefault("rss_mb", {})[name] = procs.rss_mb(g.pid)[0]
            finally:
                for g in gws.values():
                    g.stop()
            # Each gateway flushed its ledger on shutdown: every request should be recorded.
            db = gws["sqlite"].dir / "usage.db"
            if db.exists():
                with sqlite3.connect(db) as conn:
                    out["sqlite_rows"] = conn.execute("SELECT COUNT(*) FROM usage").fetchone()[0]
            out["served"] = served
    finally:
        if redis is not None:
            redis.stop()
    return out
