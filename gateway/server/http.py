"""The gateway's HTTP/1.1 server: an asyncio Protocol with the httptools parser.

The inference routes (`server.routes.find_route`) run straight through the pipeline, which
writes bytes to the socket (`HttpExchange`): no ASGI message per relayed event, no
middleware, no per-request scope dict. Every other path (/health, /v1/models, /metrics,
/admin) goes to the ASGI app through `server.bridge`, where correctness beats speed.

The server owns client-side robustness (issue #13):
- a request's headers must arrive within `header_timeout` (slowloris), a body may not
  pause longer than `body_timeout`, an idle keep-alive connection lives
  `keep_alive_timeout`; headers past `max_header_bytes` get a 431;
- a client that does not read never holds an engine back: while its socket is not
  writable the relay keeps reading the engine's stream into the transport's buffer, up
  to `relay_buffer_bytes` per request (and the kernel holds at most about twice
  `client_send_buffer_bytes`: a fixed SO_SNDBUF, not autotuning's megabytes). Past that
  bound the relay waits for the client (backpressure: the engine's stream waits in its
  socket) as long as the client keeps taking bytes; once it has taken nothing for
  `backlog_timeout` past the bound, or nothing for `write_timeout` below it, the
  connection is reset and the request cancelled ("stalled"), which closes the engine
  connection (the engine aborts the request) and frees the pool slot at once. A stream
  that fits in the bound finishes, and its slot frees, while its last bytes still wait
  for the client. While the client reads, each event goes out as it arrives (nothing is
  held back);
- malformed HTTP gets an OpenAI-shaped 400 (`bad_http_request`) and the connection closes.

Keep-alive and pipelining: requests on one connection are answered in order; while one
runs, a complete pipelined request waits (and reading pauses, as uvicorn does).
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import logging
import socket
import struct
import sys
import termios
import time
from collections import deque
from email.utils import formatdate
from http import HTTPStatus
from typing import TYPE_CHECKING

import httptools

from ..errors import GatewayError, error_body
from ..proxy import lookup, pipeline
from .exchange import ClientDisconnected, Interruption, RawHeaders
from .routes import ERROR_BODIES, find_route

if TYPE_CHECKING:
    from collections.abc import Awaitable

    from ..config import ServerConfig
    from .serve import HttpServer

log = logging.getLogger("gateway.http")
access = logging.getLogger("gateway.access")  # one line per request when `server.access_log`

# Status lines, built once.
_STATUS_LINES = {s.value: f"HTTP/1.1 {s.value} {s.phrase}\r\n".encode() for s in HTTPStatus}
_CHUNKED = b"transfer-encoding: chunked\r\n"
_CLOSE = b"connection: close\r\n"
_LAST_CHUNK = b"0\r\n\r\n"
# Linux's SIOCOUTQ (the same number as TIOCOUTQ): unsent bytes in a TCP socket's queue.
# 0 where the platform has no such request; then the transport's buffer alone is read.
_SIOCOUTQ: int = getattr(termios, "TIOCOUTQ", 0) if sys.platform.startswith("linux") else 0


class _Date:
    """The `date` header line, formatted at most once a second."""

    __slots__ = ("second", "line")

    def __init__(self) -> None:
        self.second = -1
        self.line = b""

    def get(self) -> bytes:
        now = int(time.time())
        if now != self.second:
            self.second = now
            self.line = b"date: " + formatdate(now, usegmt=True).encode() + b"\r\nserver: gateway\r\n"
        return self.line


class HttpExchange:
    """One request on one connection; implements `server.exchange.Exchange`."""

    __slots__ = ("conn", "method", "path", "query", "headers", "keep_alive", "_body", "_size", "complete",
                 "responded", "streaming", "interrupted", "in_run", "task", "status", "started", "held_back")

    def __init__(self, conn: HttpConnection, method: str, url: bytes, headers: RawHeaders, keep_alive: bool) -> None:
        self.conn = conn
        self.method = method
        raw_path, _, query = url.partition(b"?")
        self.path = raw_path.decode("latin-1")
        self.query = query
        self.headers = headers
        self.keep_alive = keep_alive
        self._body: list[bytes] = []
        self._size = 0
        self.complete = False  # the whole request has been read
        self.responded = False  # a status line went out
        self.streaming = False  # a chunked body is open
        self.interrupted: Interruption | None = None
        self.in_run = False
        self.task: asyncio.Task[None] | None = None
        self.status = 0  # what the response's status line said (for the access log)
        self.started = 0.0
        self.held_back = False

    # --- request ----------------------------------------------------------------------

    def header(self, name: bytes) -> str | None:
        for k, v in self.headers:
            if k == name:
                return v.decode("latin-1")
        return None

    def add_body(self, data: bytes) -> int:
        self._body.append(data)
        self._size += len(data)
        return self._size

    async def body(self, limit: int) -> bytes:
        # The server dispatches a request once it is read whole, so this never waits.
        if not self.complete:
            raise ClientDisconnected()
        if self._size > limit:
            raise GatewayError(413, f"Request body is larger than the limit of {limit} bytes.", "request_too_large")
        parts = self._body
        return parts[0] if len(parts) == 1 else b"".join(parts)

    # --- response ---------------------------------------------------------------------

    def _head(self, status: int, headers: RawHeaders, framing: bytes) -> list[bytes]:
        out = [_STATUS_LINES.get(status) or b"HTTP/1.1 %d Unknown\r\n" % status, self.conn.server.date.get()]
        for k, v in headers:
            out += (k, b": ", v, b"\r\n")
        out.append(framing)
        if not self.keep_alive:
            out.append(_CLOSE)
        out.append(b"\r\n")
        return out

    async def respond(self, status: int, headers: RawHeaders, body: bytes) -> None:
        if self.responded:
            return
        self.responded = True
        self.status = status
        out = self._head(status, headers, b"content-length: %d\r\n" % len(body))
        if self.method != "HEAD":
            out.append(body)
        self.conn.write(b"".join(out))

    async def start(self, status: int, headers: RawHeaders) -> None:
        if self.responded:
            return
        self.responded = self.streaming = True
        self.status = status
        self.conn.write(b"".join(self._head(status, headers, _CHUNKED)))

    async def write(self, data: bytes) -> None:
        if not data:
            return
        conn = self.conn
        conn.write(b"%x\r\n%b\r\n" % (len(data), data))
        if conn.write_paused and await conn.backlogged():
            self.held_back = True

    async def end(self, data: bytes = b"") -> None:
        if not self.streaming:
            return
        self.streaming = False
        self.conn.write(b"%x\r\n%b\r\n0\r\n\r\n" % (len(data), data) if data else _LAST_CHUNK)

    async def run(self, work: Awaitable[None]) -> Interruption | None:
        self.in_run = True
        try:
            await work
            return None
        except asyncio.CancelledError:
            if self.interrupted is None:
                raise
            task = asyncio.current_task()
            if task is not None:
                task.uncancel()
            return self.interrupted
        finally:
            self.in_run = False

    def interrupt(self, why: Interruption) -> None:
        """Cancel the request's task (the client left, or shutdown's drain period is over)."""
        if self.interrupted is None:
            self.interrupted = why
        if self.task is not None and not self.task.done():
            self.task.cancel()


class HttpConnection(asyncio.Protocol):
    """One client connection: parse, dispatch in order, enforce the client-side limits."""

    def __init__(self, server: HttpServer) -> None:
        self.server = server
        self.cfg: ServerConfig = server.cfg
        self.loop = server.loop
        self.parser = httptools.HttpRequestParser(self)
        self.transport: asyncio.Transport | None = None
        self.closed = False
        self.write_paused = False
        self._drain: asyncio.Future[None] | None = None
        self._write_timer: asyncio.TimerHandle | None = None
        # Bytes handed to the transport, and how many of them the client had taken when
        # the write timer was last armed: the client's progress while it is paused.
        self._sent = 0
        self._fd = -1  # the client socket's descriptor, for its send queue (`_taken`)
        self._taken_mark = 0
        # The request being parsed, the one being answered, the ones waiting their turn.
        self._url = b""
        self._headers: RawHeaders = []
        self._header_bytes = 0
        self._parsing: HttpExchange | None = None
        self.current: HttpExchange | None = None
        self._pending: deque[HttpExchange] = deque()
        self._reading_paused = False
        # One read deadline at a time (idle keep-alive, headers, body); one timer handle.
        self._phase: str | None = None
        self._deadline = 0.0
        self._timer: asyncio.TimerHandle | None = None
        self._timer_at = 0.0

    # --- asyncio.Protocol -------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]  # uvloop's transports are not subclasses
        sock = transport.get_extra_info("socket")
        if sock is not None:
            try:
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                self._fd = sock.fileno() if _SIOCOUTQ else -1
                if self.cfg.client_send_buffer_bytes:
                    sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, self.cfg.client_send_buffer_bytes)
            except OSError:
                pass
        self.server.connections.add(self)
        self._set_deadline("idle", self.cfg.keep_alive_timeout)

    def data_received(self, data: bytes) -> None:
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            self._reject(400, "Protocol upgrades are not supported.")
        except httptools.HttpParserError as e:
            if not self.closed:  # a callback may have rejected the request already
                self._reject(400, f"Malformed HTTP request: {_parser_reason(e)}.")

    def eof_received(self) -> bool:
        # A half-close is a disconnect (as uvicorn treats it): close, cancel the request.
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self.server.connections.discard(self)
        if self._timer is not None:
            self._timer.cancel()
        if self._write_timer is not None:
            self._write_timer.cancel()
        self._pending.clear()
        if self.current is not None:
            self.current.interrupt("disconnected")
        if self._drain is not None and not self._drain.done():
            self._drain.set_exception(ConnectionResetError("client disconnected"))
            self._drain.exception()  # retrieved: the task is cancelled anyway

    def pause_writing(self) -> None:
        self.write_paused = True
        if self._write_timer is None:
            self._taken_mark = self._taken()
            self._write_timer = self.loop.call_later(self.cfg.write_timeout, self._write_stalled)

    def resume_writing(self) -> None:
        self.write_paused = False
        if self._write_timer is not None:
            self._write_timer.cancel()
            self._write_timer = None
        if self._drain is not None and not self._drain.done():
            self._drain.set_result(None)

    # --- httptools callbacks ----------------------------------------------------------

    def on_message_begin(self) -> None:
        self._url = b""
        self._headers = []
        self._header_bytes = 0
        self._set_deadline("headers", self.cfg.header_timeout)

    def on_url(self, url: bytes) -> None:
        self._url += url
        self._header_bytes += len(url)

    def on_header(self, name: bytes, value: bytes) -> None:
        self._header_bytes += len(name) + len(value) + 4
        if self._header_bytes > self.cfg.max_header_bytes:
            self._reject(431, f"The request's headers are larger than {self.cfg.max_header_bytes} bytes.")
            raise _Rejected
        self._headers.append((name.lower(), value))

    def on_headers_complete(self) -> None:
        p = self.parser
        ex = HttpExchange(self, p.get_method().decode("latin-1"), self._url, self._headers, p.should_keep_alive())
        self._parsing = ex
        declared = ex.header(b"content-length")
        limit = self.cfg.max_body_bytes
        if declared is not None and declared.isdigit() and int(declared) > limit:
            self._reject(413, f"Request body is larger than the limit of {limit} bytes.", "request_too_large")
            raise _Rejected
        if self.current is None and (ex.header(b"expect") or "").lower() == "100-continue":
            self.write(b"HTTP/1.1 100 Continue\r\n\r\n")
        self._set_deadline("body", self.cfg.body_timeout)

    def on_body(self, body: bytes) -> None:
        ex = self._parsing
        if ex is None:
            return
        if ex.add_body(body) > self.cfg.max_body_bytes:
            self._reject(413, f"Request body is larger than the limit of {self.cfg.max_body_bytes} bytes.",
                         "request_too_large")
            raise _Rejected
        self._deadline = self.loop.time() + self.cfg.body_timeout  # an idle limit: each piece restarts it

    def on_message_complete(self) -> None:
        ex = self._parsing
        self._parsing = None
        if ex is None:
            return
        ex.complete = True
        self._phase = None
        if self.current is None:
            self._dispatch(ex)
        else:
            self._pending.append(ex)  # pipelined: answered in order
            if not self._reading_paused and self.transport is not None:
                self._reading_paused = True
                self.transport.pause_reading()

    # --- requests ---------------------------------------------------------------------

    def _dispatch(self, ex: HttpExchange) -> None:
        self.current = ex
        route = find_route(ex.path)
        if route is not None and ex.method == route.method:
            handler = lookup.handle if route.by_id else pipeline.handle
            coro = handler(self.server.state, route, ex)
        else:
            coro = self.server.handle_other(ex)
        if self.cfg.access_log:
            ex.started = self.loop.time()
        ex.task = self.loop.create_task(coro)
        ex.task.add_done_callback(self._finished)
        self.server.request_started()

    def _finished(self, task: asyncio.Task[None]) -> None:
        self.server.request_finished()
        ex = self.current
        self.current = None
        if ex is not None and self.cfg.access_log:
            access.info('%s "%s %s" %d %.1fms', self._peer(), ex.method, ex.path, ex.status,
                        (self.loop.time() - ex.started) * 1e3)
        if ex is None or self.closed:
            return
        if not task.cancelled() and task.exception() is not None:
            log.error("request handler crashed", exc_info=task.exception())
            if not ex.responded:
                ex.keep_alive = False
                self.write(_error_response(ex, 500, "Internal server error.", "internal_error"))
            self.close()
            return
        if ex.streaming or not ex.responded:
            self.close()  # cut short (shutdown, a crash): the framing is unusable
            return
        if not ex.keep_alive or self.server.draining:
            self.close()
            return
        if self._pending:
            self._dispatch(self._pending.popleft())
            if not self._pending and self._reading_paused and self.transport is not None:
                self._reading_paused = False
                self.transport.resume_reading()
        elif self._parsing is None:
            self._set_deadline("idle", self.cfg.keep_alive_timeout)

    # --- writing ----------------------------------------------------------------------

    def write(self, data: bytes) -> None:
        if not self.closed and self.transport is not None:
            self._sent += len(data)
            self.transport.write(data)

    def _taken(self) -> int:
        """Bytes the client has taken so far: written minus what still waits in the
        transport and, where the kernel tells (Linux SIOCOUTQ), in the socket's send queue.

        Without the send queue a slow reader would show progress only when the kernel
        finds the socket writable again, after about a third of its send buffer drained:
        ~150 KB, i.e. seconds apart for a client reading 50-150 KB/s, which would read as
        "took nothing" and be cut."""
        t = self.transport
        if t is None:
            return self._sent
        taken = self._sent - t.get_write_buffer_size()
        if self._fd >= 0:
            try:
                queued = struct.unpack("i", fcntl.ioctl(self._fd, _SIOCOUTQ, b"\0\0\0\0"))[0]
            except OSError:
                self._fd = -1  # not a TCP socket here (or not Linux): the transport's view only
            else:
                taken -= queued
        return taken

    async def backlogged(self) -> bool:
        """Called after a write while the client is not reading; True if it waited for
        the client (the relay was held back).

        Returns at once while the backlog fits in `relay_buffer_bytes`: the relay goes
        on reading the engine, so the engine's slot never waits on this client. Past the
        bound the relay stops reading the engine (backpressure) and waits for the client
        to take the backlog down to the transport's low-water mark, for as long as it keeps
        taking bytes; a client that takes nothing for `backlog_timeout` is cut (a
        never-reading client fills the bound in milliseconds and is gone a moment later),
        and this waits for the cancellation that follows."""
        if self.closed or self.transport is None:
            raise ConnectionResetError("client disconnected")
        limit = self.cfg.relay_buffer_bytes
        if self.transport.get_write_buffer_size() <= limit:
            return False
        grace = self.cfg.backlog_timeout
        while self.write_paused:
            mark = self._taken()
            if self._drain is None or self._drain.done():
                self._drain = self.loop.create_future()
            drain = self._drain
            timer = self.loop.call_later(grace, _wake, drain)
            try:
                await drain
            finally:
                timer.cancel()
            if self.closed or self.transport is None:
                raise ConnectionResetError("client disconnected")
            if self.write_paused and self._taken() <= mark:
                self._cut(f"its unread backlog passed relay_buffer_bytes ({limit}) "
                          f"and it read nothing for {grace:g} s")
                await self.drained()
        return True

    async def drained(self) -> None:
        """Wait until the client reads again, or until the request is cancelled."""
        if self.closed:
            raise ConnectionResetError("client disconnected")
        if self._drain is None or self._drain.done():
            self._drain = self.loop.create_future()
        await self._drain

    def _write_stalled(self) -> None:
        self._write_timer = None
        if not self.write_paused or self.closed or self.transport is None:
            return
        taken = self._taken()
        if taken > self._taken_mark:  # slow, but reading: another window
            self._taken_mark = taken
            self._write_timer = self.loop.call_later(self.cfg.write_timeout, self._write_stalled)
            return
        self._cut(f"its client read nothing for {self.cfg.write_timeout:g} s")

    def _cut(self, why: str) -> None:
        """Reset a connection whose client stopped reading; cancel its request ("stalled")."""
        if self.closed or self.transport is None:
            return
        log.info("closing a connection: %s", why)
        if self.current is not None:
            self.current.interrupt("stalled")
        sock = self.transport.get_extra_info("socket")
        if sock is not None:
            # Reset, not FIN: a closed socket with unsent bytes would otherwise linger in
            # the kernel (holding its buffer) for as long as the client keeps its window shut.
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        self.transport.abort()

    def close(self) -> None:
        if self.transport is not None and not self.transport.is_closing():
            self.transport.close()

    def _peer(self) -> str:
        peer = self.transport.get_extra_info("peername") if self.transport is not None else None
        return f"{peer[0]}:{peer[1]}" if peer else "-"

    def close_if_idle(self) -> bool:
        """Close a connection with no request in progress (shutdown); True if it was idle."""
        if self.current is None and self._parsing is None:
            self.close()
            return True
        return False

    def _reject(self, status: int, message: str, code: str = "bad_http_request") -> None:
        """Answer a request we cannot parse or accept, then close the connection."""
        if self.current is None and not self.closed:
            ex = self._parsing or HttpExchange(self, "POST", b"", [], False)
            ex.keep_alive = False
            self.write(_error_response(ex, status, message, code))
        self.close()
        self.closed = True

    # --- read deadlines ---------------------------------------------------------------

    def _set_deadline(self, phase: str, seconds: float) -> None:
        self._phase = phase
        self._deadline = deadline = self.loop.time() + seconds
        if self._timer is None or deadline < self._timer_at:
            if self._timer is not None:
                self._timer.cancel()
            self._timer_at = deadline
            self._timer = self.loop.call_at(deadline, self._check_deadline)

    def _check_deadline(self) -> None:
        self._timer = None
        phase = self._phase
        if phase is None or self.closed:
            return
        now = self.loop.time()
        if now < self._deadline:
            self._timer_at = self._deadline
            self._timer = self.loop.call_at(self._deadline, self._check_deadline)
            return
        if phase == "idle":
            self.close()
        elif phase == "headers":
            self._reject(408, f"The request's headers did not arrive within {self.cfg.header_timeout:g} s.",
                         "request_timeout")
        else:
            self._reject(408, f"The request body stalled for {self.cfg.body_timeout:g} s.", "request_timeout")


def _wake(waiter: asyncio.Future[None]) -> None:
    if not waiter.done():
        waiter.set_result(None)


class _Rejected(Exception):
    """Raised in a parser callback to stop parsing a request already answered."""


def _error_response(ex: HttpExchange, status: int, message: str, code: str) -> bytes:
    # A request refused before dispatch (413, 408 on a slow body) is still answered in its route's
    # dialect when the path is known: Anthropic clients on /v1/messages parse only Anthropic errors.
    route = find_route(ex.path) if ex.path else None
    if route is not None and route.errors != "openai":
        body = ERROR_BODIES[route.errors](GatewayError(status, message, code))
    else:
        body = error_body(message, "invalid_request_error" if status < 500 else "server_error", None, code)
    head = ex._head(status, [(b"content-type", b"application/json")], b"content-length: %d\r\n" % len(body))
    return b"".join(head) + body


def _parser_reason(e: Exception) -> str:
    text = str(e) or type(e).__name__
    return text.rstrip(".")
