"""`gateway serve`: logging, the event loop (uvloop when installed), our HTTP server.

The server and its graceful shutdown live in `server.serve`; SIGHUP reloads the config
(`install_reload_signal`, below). `uvicorn_config` / `_Server` run the same app under
uvicorn instead: only the benchmarks' tuning experiments use them (uvicorn's knobs).
"""

from __future__ import annotations

import asyncio
import logging
import signal
import sys
from collections.abc import Coroutine
from typing import Any

import uvicorn

from ..config import ConfigError, GatewayConfig
from .app import GatewayApp, create_app

log = logging.getLogger("gateway")


def setup_logging() -> None:
    logging.basicConfig(
        level=logging.INFO,
        format="%(asctime)s %(levelname)-5s %(name)s: %(message)s",
        stream=sys.stderr,
    )


def install_reload_signal(app: GatewayApp) -> None:
    """SIGHUP -> reload the config file; a bad file is logged and the old config keeps serving."""
    loop = asyncio.get_running_loop()

    def on_hup() -> None:
        loop.create_task(_reload(app))

    try:
        loop.add_signal_handler(signal.SIGHUP, on_hup)
    except (NotImplementedError, RuntimeError, ValueError):  # not the main thread (tests)
        pass


async def _reload(app: GatewayApp) -> None:
    from ..reload import reload

    try:
        summary = await reload(app.state)
        log.info("config reloaded: %s", summary)
    except ConfigError as e:
        log.error("config reload rejected, still serving the previous config:\n%s", e)
    except Exception:
        log.exception("config reload failed, still serving the previous config")


def uvicorn_config(app: GatewayApp, host: str, port: int) -> uvicorn.Config:
    cfg = app.state.config
    return uvicorn.Config(
        app,
        host=host,
        port=port,
        loop="uvloop" if _has("uvloop") else "asyncio",
        http="httptools" if _has("httptools") else "h11",
        lifespan="on",
        access_log=cfg.server.access_log,
        log_level="info",
        timeout_graceful_shutdown=int(cfg.server.drain_seconds) or None,
        timeout_keep_alive=75,  # longer than typical client pools' idle timeout
        log_config=None,
    )


class _Server(uvicorn.Server):
    def __init__(self, config: uvicorn.Config, app: GatewayApp) -> None:
        super().__init__(config)
        self.gateway = app

    async def startup(self, sockets: list | None = None) -> None:  # type: ignore[type-arg]
        install_reload_signal(self.gateway)
        await super().startup(sockets)


def serve(cfg: GatewayConfig, config_path: str | None = None, host: str | None = None, port: int | None = None) -> int:
    """Serve until SIGTERM/SIGINT, then shut down gracefully; 0 after a clean shutdown."""
    setup_logging()
    app = create_app(cfg, config_path)
    h = host or cfg.server.host
    p = port or cfg.server.port

    async def main() -> int:
        from .serve import HttpServer
        from .watchdog import LoopWatchdog

        dog = LoopWatchdog(asyncio.get_running_loop()).start()
        try:
            return await HttpServer(app).serve(h, p)
        finally:
            dog.stop()

    try:
        return _run(main())
    except ConfigError as e:
        print(f"gateway: {e}", file=sys.stderr)
        return 2
    except OSError as e:  # e.g. the port is taken
        print(f"gateway: {e}", file=sys.stderr)
        return 1


def _run(main: Coroutine[Any, Any, int]) -> int:
    if _has("uvloop"):
        import uvloop

        return uvloop.run(main)
    return asyncio.run(main)


def _has(module: str) -> bool:
    import importlib.util

    return importlib.util.find_spec(module) is not None
