"""The server's lifecycle: start-up, serving, and a graceful shutdown that reads top-down.

`HttpServer.serve` = startup -> wait for SIGTERM/SIGINT (or `request_exit`) -> shutdown.
Shutdown's steps are numbered in `shutdown` below; the one promise it keeps whatever
happens (issue #14): a stream still running when the drain period ends is ended with
an OpenAI-shaped error event and `data: [DONE]`, never cut mid-body, and its usage is
recorded before the ledger is flushed.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import socket
import time

from ..config import ServerConfig
from ..errors import GatewayError
from ..state import GatewayState
from .app import GatewayApp
from .bridge import call_asgi
from .http import HttpConnection, HttpExchange, _Date

log = logging.getLogger("gateway")

# After the drain period, how long cut-short requests get to write their last event.
CUT_GRACE_S = 5.0


class HttpServer:
    def __init__(self, app: GatewayApp) -> None:
        self.app = app
        self.state: GatewayState = app.state
        self.loop = asyncio.get_running_loop()
        self.connections: set[HttpConnection] = set()
        self.date = _Date()
        self.in_flight = 0
        self._all_done = asyncio.Event()
        self._all_done.set()
        self._exit = asyncio.Event()
        self._force = False
        self._listeners: list[asyncio.Server] = []
        self.draining = False
        self.started = False
        self.port = 0

    @property
    def cfg(self) -> ServerConfig:
        return self.state.config.server  # read per connection, so a reload applies to new ones

    # --- requests (called by HttpConnection) ------------------------------------------

    async def handle_other(self, ex: HttpExchange) -> None:
        try:
            await call_asgi(self.app, ex, self.cfg.max_body_bytes)
        except GatewayError as e:
            await ex.respond(e.status, [(b"content-type", b"application/json")], e.body())

    def request_started(self) -> None:
        self.in_flight += 1
        self._all_done.clear()

    def request_finished(self) -> None:
        self.in_flight -= 1
        if self.in_flight <= 0:
            self.in_flight = 0
            self._all_done.set()

    # --- lifecycle --------------------------------------------------------------------

    async def serve(self, host: str, port: int, sock: socket.socket | None = None) -> int:
        await self.startup(host, port, sock)
        await self._exit.wait()
        await self.shutdown()
        return 0

    def request_exit(self) -> None:
        """Begin a graceful shutdown (thread-safe); a second call skips the drain period."""
        if self._exit.is_set():
            self._force = True
        self.loop.call_soon_threadsafe(self._exit.set)

    async def startup(self, host: str, port: int, sock: socket.socket | None = None) -> None:
        # 1. Subsystems: HTTP client to engines, metrics, meter, limiter, keys, engines.
        await self.app.startup()
        # 2. Listen. Engines warm up in the background; requests queue on their pools.
        def factory() -> HttpConnection:
            return HttpConnection(self)

        if sock is not None:
            listener = await self.loop.create_server(factory, sock=sock, backlog=2048)
        else:
            listener = await self.loop.create_server(factory, host, port, reuse_address=True, backlog=2048)
        self._listeners.append(listener)
        self.port = listener.sockets[0].getsockname()[1]
        # 3. Signals: SIGTERM/SIGINT stop gracefully (twice: at once), SIGHUP reloads.
        for sig in (signal.SIGTERM, signal.SIGINT):
            with contextlib.suppress(NotImplementedError, RuntimeError, ValueError):  # not the main thread
                self.loop.add_signal_handler(sig, self.request_exit)
        from .run import install_reload_signal

        install_reload_signal(self.app)
        log.info("gateway listening on http://%s:%d", host, self.port)
        self.started = True

    async def shutdown(self) -> None:
        s = self.state
        drain = self.cfg.drain_seconds
        # 1. Stop accepting connections.
        for listener in self._listeners:
            listener.close()
        # 2. Refuse new requests with 503 (and /health says draining); close idle keep-alive
        #    connections, and each busy one once its response is done.
        self.draining = True
        s.draining = True
        for conn in list(self.connections):
            conn.close_if_idle()
        # 3. Let in-flight requests finish, up to drain_seconds.
        if self.in_flight and not self._force:
            log.info("shutdown: waiting up to %.0f s for %d request(s) in flight", drain, self.in_flight)
            started = time.monotonic()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._all_done.wait(), timeout=drain)
            log.info("shutdown: drain ended after %.1f s", time.monotonic() - started)
        # 4. End what still runs: a stream gets an error event and `data: [DONE]`, a request
        #    without an answer yet gets a 503; each is recorded by the pipeline's `finish`.
        if self.in_flight:
            log.warning("shutdown: ending %d request(s) that outlasted the drain period", self.in_flight)
            for conn in list(self.connections):
                if conn.current is not None:
                    conn.current.interrupt("shutdown")
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._all_done.wait(), timeout=CUT_GRACE_S)
        # 5. Close every connection (their last bytes are flushed by the transport).
        for conn in list(self.connections):
            conn.close()
        for listener in self._listeners:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(listener.wait_closed(), timeout=1.0)
        # 6. Stop engines, flush the usage ledger, close clients.
        await self.app.shutdown()
        # 7. The caller exits with status 0.
        log.info("shutdown complete")
