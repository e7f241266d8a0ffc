"""Run the gateway with one setting changed, for the tuning experiments.

    python -m benchmarks.launch --config FILE --port P [knobs...]

Same app (`gateway.server.app.create_app`) and the same server as `gateway serve`
(`gateway.server.serve.HttpServer`), then exactly one knob flipped, so a difference in
the numbers is that knob's. `--http`, `--access-log` and `--proxy-headers` are uvicorn's
knobs: with any of them the app runs under uvicorn (`gateway.server.run.uvicorn_config`). Knobs that change hot-path code (the HTTP client to the
engines, the metrics object) are applied by patching at start-up here; the gateway's
files are untouched. `--upstream raw` (the default) is the gateway's own default client
(`gateway.proxy.client.RawSession`), so it patches nothing.

`--workers N` runs N processes that each bind the port with SO_REUSEPORT (the kernel
spreads connections); the parent only waits and forwards SIGTERM.
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import socket
import sys
from typing import Any


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m benchmarks.launch")
    p.add_argument("--config", required=True)
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--workers", type=int, default=1, help="processes sharing the port via SO_REUSEPORT")
    p.add_argument("--loop", choices=["uvloop", "asyncio"], default=None)
    p.add_argument("--http", choices=["httptools", "h11"], default=None)
    p.add_argument("--access-log", action="store_true", help="uvicorn access log on (to a file)")
    p.add_argument("--proxy-headers", choices=["on", "off"], default=None,
                   help="uvicorn's X-Forwarded-* middleware (uvicorn default: on)")
    p.add_argument("--no-metrics", action="store_true", help="no Prometheus metrics object (state.metrics = None)")
    p.add_argument("--upstream", default="raw", choices=["raw", *UPSTREAMS],
                   help="HTTP client to the engines: raw (the gateway's default, no patch), aiohttp (its "
                   "fallback), or an experimental variant (see benchmarks/upstreams.py)")
    p.add_argument("--gc-freeze", action="store_true", help="gc.freeze() after start-up (objects alive then are "
                   "never scanned again)")
    p.add_argument("--engine-capacity", type=int, default=0,
                   help="tell the balancer every endpoint's batch size (Backend.engine_capacity)")
    return p


# Clients other than the default; each factory takes (and ignores) the `kind` argument
# that gateway.server.app passes to make_session (cfg.server.upstream_client).
UPSTREAMS = ("aiohttp", "aiohttp-limit100", "aiohttp-force-close", "aiohttp-decompress-off", "httpx")


def _patch_upstream(kind: str) -> None:
    if kind == "raw":
        return  # the gateway's own default: nothing to patch
    import gateway.server.app as app_mod

    from . import upstreams

    app_mod.make_session = upstreams.FACTORIES[kind]  # type: ignore[attr-defined]


def _patch_startup(args: argparse.Namespace, app: Any) -> None:
    original = app.startup

    async def startup() -> None:
        await original()
        if args.gc_freeze:
            import gc

            gc.collect()
            gc.freeze()
        st = app.state
        if args.no_metrics:
            st.metrics = None
        if args.engine_capacity:
            for pool in st.pools.values():
                for b in pool.backends:
                    b.engine_capacity = args.engine_capacity

    app.startup = startup


def serve_one(args: argparse.Namespace, sock: socket.socket | None) -> None:
    from gateway import config as config_mod
    from gateway.server.app import create_app
    from gateway.server.run import setup_logging

    setup_logging()
    _patch_upstream(args.upstream)
    cfg = config_mod.load(args.config)
    app = create_app(cfg, args.config)
    _patch_startup(args, app)
    if args.http or args.access_log or args.proxy_headers:
        return _serve_uvicorn(args, app, sock)  # uvicorn's own knobs: the same app under uvicorn

    async def main() -> int:
        from gateway.server.serve import HttpServer

        return await HttpServer(app).serve(args.host, args.port, sock)

    if args.loop == "asyncio":
        import asyncio

        asyncio.run(main())
    else:
        import uvloop

        uvloop.run(main())


def _serve_uvicorn(args: argparse.Namespace, app: Any, sock: socket.socket | None) -> None:
    import uvicorn

    from gateway.server.run import _Server, uvicorn_config

    ucfg: uvicorn.Config = uvicorn_config(app, args.host, args.port)
    if args.loop:
        ucfg.loop = args.loop
    if args.http:
        ucfg.http = args.http
    if args.access_log:
        ucfg.access_log = True
        logging.getLogger("uvicorn.access").addHandler(logging.FileHandler("access.log"))
        logging.getLogger("uvicorn.access").setLevel(logging.INFO)
    if args.proxy_headers:
        ucfg.proxy_headers = args.proxy_headers == "on"
    server = _Server(ucfg, app)
    server.run(sockets=[sock] if sock is not None else None)


def reuseport_socket(host: str, port: int) -> socket.socket:
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    s.bind((host, port))
    s.listen(2048)
    s.set_inheritable(True)
    return s


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.workers <= 1:
        serve_one(args, None)
        return 0
    children: list[int] = []
    for _ in range(args.workers):
        pid = os.fork()
        if pid == 0:
            try:
                serve_one(args, reuseport_socket(args.host, args.port))
            finally:
                os._exit(0)
        children.append(pid)

    def forward(signum: int, _frame: Any) -> None:
        for c in children:
            try:
                os.kill(c, signum)
            except ProcessLookupError:
                pass

    signal.signal(signal.SIGTERM, forward)
    signal.signal(signal.SIGINT, forward)
    for c in children:
        while True:
            try:
                os.waitpid(c, 0)
                break
            except InterruptedError:
                continue
            except ChildProcessError:
                break
    return 0


if __name__ == "__main__":
    sys.exit(main())
