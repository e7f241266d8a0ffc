"""A small, fast HTTP/1.1 server on raw asyncio + httptools.

Why not aiohttp/uvicorn: the simulator must never be the bottleneck of a gateway
benchmark, and we need to notice a client disconnect at once (vLLM aborts the
request and frees its batch slot). With a Protocol, `connection_lost` fires as soon
as the peer closes, and we cancel the request's task right there.

Supports keep-alive, pipelining (requests are answered in order), Content-Length and
chunked request bodies, `Expect: 100-continue`, and chunked responses for streams.
"""

from __future__ import annotations

import asyncio
import logging
import socket
import time
from collections import deque
from collections.abc import Awaitable, Callable
from email.utils import formatdate
from http import HTTPStatus

import httptools

log = logging.getLogger("gateway.sim.http")

MAX_BODY_BYTES = 64 * 1024 * 1024
_REASONS = {s.value: s.phrase.encode() for s in HTTPStatus}


class _DateCache:
    """`Date` header value, formatted at most once per second (formatting costs ~5 us)."""

    second = -1
    value = b""

    @classmethod
    def get(cls) -> bytes:
        now = int(time.time())
        if now != cls.second:
            cls.second = now
            cls.value = formatdate(now, usegmt=True).encode()
        return cls.value


class Request:
    __slots__ = ("method", "path", "query", "headers", "body", "keep_alive")

    def __init__(self, method: str, url: bytes, headers: dict[str, str], body: bytes, keep_alive: bool):
        self.method = method
        raw_path, _, query = url.partition(b"?")
        self.path = raw_path.decode("latin-1")
        self.query = query.decode("latin-1")
        self.headers = headers  # lower-case names; a repeated header keeps its last value
        self.body = body
        self.keep_alive = keep_alive


Handler = Callable[[Request, "Connection"], Awaitable[None]]


class Connection(asyncio.Protocol):
    """One client connection. The handler writes through send()/start_stream()/write_chunk()."""

    def __init__(self, handler: Handler) -> None:
        self._handler = handler
        self._loop = asyncio.get_running_loop()
        self._parser = httptools.HttpRequestParser(self)
        self.transport: asyncio.Transport | None = None
        self.closed = False
        self._url = b""
        self._headers: dict[str, str] = {}
        self._body: list[bytes] = []
        self._body_size = 0
        self._too_large = False
        self._pending: deque[Request] = deque()
        self._task: asyncio.Task[None] | None = None
        self._current: Request | None = None
        self._responded = False
        self._write_paused = False
        self._drain_waiter: asyncio.Future[None] | None = None

    # ---- asyncio.Protocol -------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]  # uvloop's transports are not subclasses
        sock = transport.get_extra_info("socket")
        if sock is not None:
            try:
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            except OSError:
                pass

    def data_received(self, data: bytes) -> None:
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            self._fatal(400, b"upgrades are not supported")
        except (httptools.HttpParserError, _BodyTooLarge) as exc:
            # httptools wraps exceptions raised in callbacks, hence the flag
            if self._too_large:
                self._fatal(413, b"request body too large")
            else:
                self._fatal(400, f"invalid HTTP request: {exc}".encode())

    def eof_received(self) -> bool:
        # A half-close is treated as a disconnect, as uvicorn does for vLLM: returning
        # False closes the transport and connection_lost aborts the running request.
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self._pending.clear()
        if self._task is not None and not self._task.done():
            self._task.cancel()  # the handler's finally blocks free the slot and count the abort
        if self._drain_waiter is not None and not self._drain_waiter.done():
            self._drain_waiter.cancel()  # its task was just cancelled too

    def pause_writing(self) -> None:
        self._write_paused = True

    def resume_writing(self) -> None:
        self._write_paused = False
        if self._drain_waiter is not None and not self._drain_waiter.done():
            self._drain_waiter.set_result(None)

    # ---- httptools callbacks ---------------------------------------------
    def on_message_begin(self) -> None:
        self._url = b""
        self._headers = {}
        self._body = []
        self._body_size = 0

    def on_url(self, url: bytes) -> None:
        self._url += url

    def on_header(self, name: bytes, value: bytes) -> None:
        self._headers[name.decode("latin-1").lower()] = value.decode("latin-1")

    def on_headers_complete(self) -> None:
        length = self._headers.get("content-length")
        if length is not None and length.isdigit() and int(length) > MAX_BODY_BYTES:
            self._too_large = True
            raise _BodyTooLarge
        if self._headers.get("expect", "").lower() == "100-continue" and self.transport:
            self.transport.write(b"HTTP/1.1 100 Continue\r\n\r\n")

    def on_body(self, body: bytes) -> None:
        self._body_size += len(body)
        if self._body_size > MAX_BODY_BYTES:
            self._too_large = True
            raise _BodyTooLarge
        self._body.append(body)

    def on_message_complete(self) -> None:
        p = self._parser
        req = Request(p.get_method().decode("latin-1"), self._url, self._headers, b"".join(self._body),
                      p.should_keep_alive())
        if self._task is None:
            self._start(req)
        else:
            self._pending.append(req)  # pipelined: answered in order

    # ---- request lifecycle -----------------------------------------------
    def _start(self, req: Request) -> None:
        self._current = req
        self._responded = False
        self._task = self._loop.create_task(self._handler(req, self))
        self._task.add_done_callback(self._finished)

    def _finished(self, task: asyncio.Task[None]) -> None:
        self._task = None
        req = self._current
        self._current = None
        if not task.cancelled():
            exc = task.exception()
            if exc is not None and not isinstance(exc, ConnectionError):
                log.error("handler crashed", exc_info=exc)
            if not self._responded:
                self._current = req  # so send() knows the keep-alive mode
                self.send(500, b'{"error":{"message":"internal error","type":"InternalServerError",'
                               b'"param":null,"code":500}}')
                self._current = None
            elif exc is not None:
                self.close()  # a stream broke half-way: the framing is unusable
        if self.closed:
            return
        if req is None or not req.keep_alive:
            self.close()
        elif self._pending:
            self._start(self._pending.popleft())

    def _fatal(self, status: int, message: bytes) -> None:
        if self._current is None and self.transport and not self.closed:
            body = b'{"error":{"message":"' + message.replace(b'"', b"'") + b'","type":"BadRequestError",' \
                   + b'"param":null,"code":' + str(status).encode() + b"}}"
            self.transport.write(self._head(status, [(b"content-type", b"application/json"),
                                                     (b"content-length", str(len(body)).encode())], False) + body)
        self.close()

    def close(self) -> None:
        if self.transport is not None and not self.transport.is_closing():
            self.transport.close()

    # ---- response writing --------------------------------------------------
    def _head(self, status: int, headers: list[tuple[bytes, bytes]], keep_alive: bool) -> bytes:
        out = [b"HTTP/1.1 ", str(status).encode(), b" ", _REASONS.get(status, b"Unknown"),
               b"\r\ndate: ", _DateCache.get(), b"\r\nserver: gateway-sim\r\n"]
        for name, value in headers:
            out += (name, b": ", value, b"\r\n")
        if not keep_alive:
            out.append(b"connection: close\r\n")
        out.append(b"\r\n")
        return b"".join(out)

    def send(self, status: int, body: bytes, content_type: bytes = b"application/json",
             headers: list[tuple[bytes, bytes]] | None = None) -> None:
        """Send a complete response (no-op if the client is gone)."""
        if self.closed or self.transport is None or self._responded:
            return
        self._responded = True
        keep = self._current.keep_alive if self._current is not None else False
        hdrs = [(b"content-type", content_type), (b"content-length", str(len(body)).encode())]
        if headers:
            hdrs += headers
        self.transport.write(self._head(status, hdrs, keep) + body)  # one write, one segment

    def start_stream(self, status: int = 200, content_type: bytes = b"text/event-stream; charset=utf-8",
                     headers: list[tuple[bytes, bytes]] | None = None) -> None:
        if self.closed or self.transport is None or self._responded:
            return
        self._responded = True
        keep = self._current.keep_alive if self._current is not None else False
        hdrs = [(b"content-type", content_type), (b"transfer-encoding", b"chunked"),
                (b"cache-control", b"no-cache"), (b"x-accel-buffering", b"no")]
        if headers:
            hdrs += headers
        self.transport.write(self._head(status, hdrs, keep))

    def write_chunk(self, data: bytes) -> None:
        """Write one chunk of a chunked body, immediately (TCP_NODELAY is set)."""
        if data and not self.closed and self.transport is not None:
            self.transport.write(b"%x\r\n%b\r\n" % (len(data), data))

    def end_stream(self) -> None:
        if not self.closed and self.transport is not None:
            self.transport.write(b"0\r\n\r\n")

    async def drain(self) -> None:
        """Wait while the transport's write buffer is above its high-water mark."""
        if self.closed:
            raise ConnectionResetError("client disconnected")
        if self._write_paused:
            self._drain_waiter = self._loop.create_future()
            await self._drain_waiter

    @property
    def responded(self) -> bool:
        return self._responded


class _BodyTooLarge(Exception):
    pass


async def serve(handler: Handler, host: str, port: int) -> asyncio.Server:
    loop = asyncio.get_running_loop()
    server = await loop.create_server(lambda: Connection(handler), host, port, reuse_address=True, backlog=2048)
    return server
