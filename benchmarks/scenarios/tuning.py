"""What we tried, one change at a time: the gateway with one knob flipped vs as shipped.

Every variant runs through benchmarks.launch (same app, same uvicorn settings as
`gateway serve`, one knob changed), against the same zero-latency engines, at
concurrency 32: non-stream, and stream with one write per event (the case where
per-event costs show). The baseline is measured first and last; points interleave with
it rep by rep. The baseline is the gateway as shipped, on its own keep-alive client to
the engines; the aiohttp fallback and httpx show what the other clients cost. The figure that matters is CPU per request (steady on a shared machine);
req/s is reported but is at the mercy of neighbours.
"""

from __future__ import annotations

from typing import Any

from .. import loadgen, procs, workload
from ..context import Bench
from ..measure import Setup, point
from .overhead import TOKENS, sim_args

CONCURRENCY = 32
# (name, launcher arguments, modes to measure, what it tests, the variant it is compared with)
VARIANTS: list[tuple[str, list[str], tuple[str, ...], str, str]] = [
    ("baseline", [], ("non-stream", "stream", "non-stream c=1"),
     "as shipped: uvloop, httptools, access log off, the gateway's own keep-alive client", ""),
    ("aiohttp client (fallback)", ["--upstream", "aiohttp"], ("non-stream", "stream", "non-stream c=1"),
     "`server.upstream_client: aiohttp`, the pre-change client to the engines", "baseline"),
    ("httpx", ["--upstream", "httpx"], ("non-stream", "stream"), "httpx.AsyncClient, default transport", "baseline"),
    ("aiohttp no keep-alive", ["--upstream", "aiohttp-force-close"], ("non-stream",),
     "aiohttp with a new engine connection per request", "aiohttp client (fallback)"),
    ("asyncio loop", ["--loop", "asyncio"], ("non-stream", "stream"), "stdlib event loop instead of uvloop",
     "baseline"),
    ("h11 parser", ["--http", "h11"], ("non-stream", "stream"), "uvicorn's pure-Python HTTP parser instead of httptools",
     "baseline"),
    ("access log on", ["--access-log"], ("non-stream",), "uvicorn access log to a file", "baseline"),
    ("proxy headers off", ["--proxy-headers", "off"], ("non-stream", "stream"), "no X-Forwarded-* middleware",
     "baseline"),
    ("no Prometheus", ["--no-metrics"], ("non-stream", "stream"), "metrics object removed from the request path",
     "baseline"),
    ("2 workers, SO_REUSEPORT", ["--workers", "2"], ("non-stream", "stream"),
     "two processes on the same CPU sharing the port", "baseline"),
]


def run(bench: Bench) -> dict[str, Any]:
    setup = Setup(window=bench.pick(1.0, 2.0), warmup=bench.pick(0.3, 0.5), reps=bench.pick(1, 2))
    variants = VARIANTS if not bench.quick else [v for v in VARIANTS if v[0] in ("baseline", "aiohttp client (fallback)")]
    msgs = workload.messages_for(TOKENS)
    bodies = {"non-stream": ("bench", False, CONCURRENCY), "stream": ("paced", True, CONCURRENCY),
              "non-stream c=1": ("bench", False, 1)}
    out: dict[str, Any] = {"setup": setup.__dict__, "concurrency": CONCURRENCY, "points": [],
                           "variants": {n: {"args": a, "modes": list(m), "what": w, "ref": ref}
                                        for n, a, m, w, ref in variants}}
    with procs.sims([sim_args("bench", 0), sim_args("paced", 1)]) as (zero, paced):
        pools = {"bench": {"endpoints": [zero.base_url], "max_concurrency": 4096},
                 "paced": {"endpoints": [paced.base_url], "max_concurrency": 4096}}
        yaml = procs.gateway_yaml(pools)
        sims = {"bench": zero, "paced": paced}
        order = [variants[0]] + variants[1:] + [variants[0]]  # baseline first and last
        for rep in range(setup.reps):
            for i, (name, args, modes, _, _) in enumerate(order):
                with procs.Gateway(f"tuning-{i}", yaml, bench.placement, launcher="bench", launch_args=args) as gw:
                    pids = gw.child_pids() if "--workers" in args else [gw.pid]
                    for mode in modes:
                        model, stream, conc = bodies[mode]
                        body = workload.chat_body(model, msgs, TOKENS, stream=stream)

                        def raw_for(t: loadgen.Target, body: bytes = body) -> bytes:
                            return loadgen.build_request(t, "/v1/chat/completions", body)

                        r = bench.run(point([gw.target], raw_for, conc, stream, setup, pids, [sims[model].pid]))
                        r.update(variant=name, mode=mode, rep=rep, rss_mb=sum(procs.rss_mb(p)[0] for p in pids))
                        out["points"].append(r)
                        bench.log(f"tuning rep{rep} {name:24s} {mode:10s} {r['rps']:6.0f} req/s "
                                  f"cpu {r['server_cpu_us']:.0f} us p50 {r['lat_p50_ms']:.2f} ms err {r['errors']}")
    return out
