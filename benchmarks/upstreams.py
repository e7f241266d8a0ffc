"""HTTP clients to the engines, interchangeable behind the subset of aiohttp the gateway uses.

The gateway talks to engines through `state.http`, an `aiohttp.ClientSession` from
`gateway.upstream.make_session`. The proxy uses `session.post(url, data=, headers=,
timeout=)` as an async context manager, then `resp.status`, `resp.headers`,
`await resp.read()` and `resp.content.iter_any()`; discovery uses `session.get` and
`resp.json()`. Each factory below returns an object with that surface, so the launcher
(benchmarks.launch --upstream KIND) can swap clients without touching the hot path:

- aiohttp variants: the connector's limit, keep-alive off, decompression off.
- httpx: `httpx.AsyncClient` with its default transport (encode/httpx #3215 reports its
  pool is slow under concurrency).
- raw: a minimal keep-alive client on asyncio protocols + httptools (the same parser
  uvicorn uses), the prototype of a proposed `gateway/upstream_raw.py`.
"""

from __future__ import annotations

import asyncio
import socket
from collections import deque
from collections.abc import AsyncIterator, Callable
from typing import Any
from urllib.parse import urlsplit

import aiohttp
import httptools
import orjson

# --- aiohttp variants ------------------------------------------------------------------


def _aiohttp(**connector: Any) -> Callable[[], aiohttp.ClientSession]:
    def make(**session: Any) -> aiohttp.ClientSession:
        opts: dict[str, Any] = {"limit": 0, "limit_per_host": 0, "keepalive_timeout": 60, "ttl_dns_cache": 300,
                                "enable_cleanup_closed": False}
        opts.update(connector)
        if opts.get("force_close"):
            opts.pop("keepalive_timeout")
        kw: dict[str, Any] = {"timeout": aiohttp.ClientTimeout(total=None), "auto_decompress": True,
                              "skip_auto_headers": ("User-Agent",), "read_bufsize": 2**18}
        kw.update(session)
        return aiohttp.ClientSession(connector=aiohttp.TCPConnector(**opts), **kw)

    return make


# --- httpx -------------------------------------------------------------------------------


class _HttpxResponse:
    def __init__(self, r: Any) -> None:
        self._r = r
        self.status: int = r.status_code
        self.headers = r.headers
        self.content = self

    async def read(self) -> bytes:
        import httpx

        try:
            return bytes(await self._r.aread())
        except httpx.HTTPError as e:
            raise _map_httpx(e) from e

    async def iter_any(self) -> AsyncIterator[bytes]:
        import httpx

        try:
            async for chunk in self._r.aiter_raw():
                yield chunk
        except httpx.HTTPError as e:
            raise _map_httpx(e) from e

    async def json(self, content_type: str | None = None) -> Any:
        return orjson.loads(await self.read())


def _map_httpx(e: Exception) -> Exception:
    import httpx

    if isinstance(e, httpx.TimeoutException):
        return TimeoutError(str(e))
    if isinstance(e, httpx.ConnectError):
        return aiohttp.ClientOSError(111, str(e))
    if isinstance(e, httpx.RemoteProtocolError):
        return aiohttp.ServerDisconnectedError()
    return aiohttp.ClientError(str(e))


class _HttpxCall:
    def __init__(self, client: Any, method: str, url: str, data: bytes | None, headers: Any, timeout: Any) -> None:
        self.client, self.method, self.url, self.data, self.headers = client, method, url, data, headers
        self.timeout = timeout
        self._cm: Any = None

    async def __aenter__(self) -> _HttpxResponse:
        import httpx

        t = self.timeout
        timeout = httpx.Timeout(None) if t is None else httpx.Timeout(
            connect=t.sock_connect or t.connect or t.total, read=t.sock_read or t.total, write=None, pool=None)
        self._cm = self.client.stream(self.method, self.url, content=self.data, headers=self.headers, timeout=timeout)
        try:
            return _HttpxResponse(await self._cm.__aenter__())
        except httpx.HTTPError as e:
            raise _map_httpx(e) from e

    async def __aexit__(self, *exc: Any) -> None:
        await self._cm.__aexit__(*exc)


class HttpxSession:
    def __init__(self) -> None:
        import httpx

        self.client = httpx.AsyncClient(
            limits=httpx.Limits(max_connections=None, max_keepalive_connections=None, keepalive_expiry=60),
            timeout=None)

    def post(self, url: str, data: bytes | None = None, headers: Any = None, timeout: Any = None) -> _HttpxCall:
        return _HttpxCall(self.client, "POST", url, data, headers, timeout)

    def get(self, url: str, headers: Any = None, timeout: Any = None) -> _HttpxCall:
        return _HttpxCall(self.client, "GET", url, None, headers, timeout)

    async def close(self) -> None:
        await self.client.aclose()


# --- raw: asyncio protocol + httptools -----------------------------------------------------

_HIGH_WATER = 1 << 20  # pause reading from the engine above this many unread bytes


class _Headers:
    """Case-insensitive view of response headers (lower-case keys, last value wins)."""

    __slots__ = ("_d",)

    def __init__(self, d: dict[str, str]) -> None:
        self._d = d

    def get(self, key: str, default: Any = None) -> Any:
        return self._d.get(key.lower(), default)

    def items(self) -> Any:
        return self._d.items()

    def __bool__(self) -> bool:
        return bool(self._d)


class _UpConn(asyncio.Protocol):
    """One keep-alive connection to an engine; one request at a time."""

    def __init__(self, pool: RawSession, key: tuple[str, int]) -> None:
        self.pool, self.key = pool, key
        self.transport: asyncio.Transport | None = None
        self.parser = httptools.HttpResponseParser(self)
        self.closed = False
        self.status = 0
        self._hdrs: dict[str, str] = {}
        self._head: asyncio.Future[None] | None = None
        self._chunks: deque[bytes] = deque()
        self._buffered = 0
        self._paused = False
        self._more: asyncio.Future[None] | None = None
        self.complete = False
        self.error: BaseException | None = None
        self.last_read = 0.0

    # asyncio.Protocol
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        sock = transport.get_extra_info("socket")
        if sock is not None:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def data_received(self, data: bytes) -> None:
        self.last_read = self.pool.loop.time()
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserError as e:
            self._fail(aiohttp.ClientPayloadError(f"invalid HTTP from the engine: {e}"))
            self.close()

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self.pool._all.discard(self)
        if not self.complete:
            self._fail(aiohttp.ServerDisconnectedError() if exc is None else aiohttp.ClientOSError(0, str(exc)))

    # httptools callbacks
    def on_header(self, name: bytes, value: bytes) -> None:
        self._hdrs[name.decode("latin-1").lower()] = value.decode("latin-1")

    def on_headers_complete(self) -> None:
        self.status = self.parser.get_status_code()
        if self._head is not None and not self._head.done():
            self._head.set_result(None)

    def on_body(self, body: bytes) -> None:
        self._chunks.append(body)
        self._buffered += len(body)
        if self._buffered > _HIGH_WATER and not self._paused and self.transport is not None:
            self._paused = True
            self.transport.pause_reading()
        self._wake()

    def on_message_complete(self) -> None:
        self.complete = True
        if not self.parser.should_keep_alive():
            self.close()
        self._wake()

    def _wake(self) -> None:
        m = self._more
        if m is not None and not m.done():
            m.set_result(None)

    def _fail(self, e: BaseException) -> None:
        self.error = self.error or e
        for f in (self._head, self._more):
            if f is not None and not f.done():
                f.set_exception(self.error)
                f.exception()  # mark retrieved; the reader re-raises self.error

    # used by _RawResponse
    async def next_chunk(self) -> bytes | None:
        while not self._chunks:
            if self.complete:
                return None
            if self.error is not None:
                raise self.error
            self._more = self.pool.loop.create_future()
            try:
                await self._more  # raises the connection's error if it fails meanwhile
            finally:
                self._more = None
        chunk = self._chunks.popleft()
        self._buffered -= len(chunk)
        if self._paused and self._buffered < _HIGH_WATER // 2 and self.transport is not None:
            self._paused = False
            self.transport.resume_reading()
        return chunk

    def reset(self) -> None:
        self.parser = httptools.HttpResponseParser(self)
        self.status, self._hdrs, self.complete, self.error = 0, {}, False, None
        self._chunks.clear()
        self._buffered = 0

    def close(self) -> None:
        self.closed = True
        if self.transport is not None and not self.transport.is_closing():
            self.transport.close()


class _RawResponse:
    def __init__(self, conn: _UpConn) -> None:
        self._conn = conn
        self.status = conn.status
        self.headers = _Headers(conn._hdrs)
        self.content = self

    async def read(self) -> bytes:
        parts = []
        while (chunk := await self._conn.next_chunk()) is not None:
            parts.append(chunk)
        return parts[0] if len(parts) == 1 else b"".join(parts)

    async def iter_any(self) -> AsyncIterator[bytes]:
        while (chunk := await self._conn.next_chunk()) is not None:
            yield chunk

    async def json(self, content_type: str | None = None) -> Any:
        return orjson.loads(await self.read())


class _RawCall:
    def __init__(self, session: RawSession, method: str, url: str, data: bytes | None, headers: Any,
                 timeout: Any) -> None:
        self.s, self.method, self.url, self.data, self.headers, self.timeout = session, method, url, data, headers, timeout
        self.conn: _UpConn | None = None
        self._timer: asyncio.TimerHandle | None = None

    async def __aenter__(self) -> _RawResponse:
        s = self.s
        key, hostport, path = s.split(self.url)
        t = self.timeout
        read_timeout = (t.sock_read or t.total) if t is not None else None
        conn = await s.acquire(key, (t.sock_connect or t.connect or t.total) if t is not None else None)
        self.conn = conn
        body = self.data or b""
        head = [f"{self.method} {path} HTTP/1.1\r\nHost: {hostport}\r\nContent-Length: {len(body)}\r\n"]
        for k, v in (self.headers or {}).items():
            head.append(f"{k}: {v}\r\n")
        head.append("\r\n")
        conn._head = s.loop.create_future()
        assert conn.transport is not None
        conn.last_read = s.loop.time()
        conn.transport.write("".join(head).encode("latin-1") + body)
        if read_timeout:
            self._arm(read_timeout)
        try:
            await conn._head  # raises the connection's error (closed, timeout) if it fails first
        except BaseException:
            # `async with` skips __aexit__ when __aenter__ raises: a client that went away
            # while the engine was still generating must close the connection here.
            await self.__aexit__(None, None, None)
            raise
        return _RawResponse(conn)

    def _arm(self, seconds: float) -> None:
        conn = self.conn
        assert conn is not None
        loop = self.s.loop

        def check() -> None:
            idle = loop.time() - conn.last_read
            if conn.complete or conn.closed:
                return
            if idle >= seconds:
                conn._fail(TimeoutError())
                conn.close()
            else:
                self._timer = loop.call_later(seconds - idle, check)

        self._timer = loop.call_later(seconds, check)

    async def __aexit__(self, *exc: Any) -> None:
        if self._timer is not None:
            self._timer.cancel()
        conn = self.conn
        if conn is None:
            return
        if conn.complete and not conn.closed and conn.error is None:
            self.s.release(conn)
        else:
            conn.close()  # cut short (client gone, error): the engine sees the close and aborts


class RawSession:
    """A keep-alive pool per (host, port); no connection limit (the pools enforce concurrency)."""

    def __init__(self) -> None:
        self.loop = asyncio.get_running_loop()
        self._idle: dict[tuple[str, int], list[_UpConn]] = {}
        self._all: set[_UpConn] = set()  # every open connection, closed with the session
        self._urls: dict[str, tuple[tuple[str, int], str, str]] = {}

    def split(self, url: str) -> tuple[tuple[str, int], str, str]:
        hit = self._urls.get(url)
        if hit is None:
            u = urlsplit(url)
            port = u.port or (443 if u.scheme == "https" else 80)
            host = u.hostname or "127.0.0.1"
            path = (u.path or "/") + (f"?{u.query}" if u.query else "")
            hit = ((host, port), u.netloc, path)
            if len(self._urls) < 4096:
                self._urls[url] = hit
        return hit

    async def acquire(self, key: tuple[str, int], connect_timeout: float | None) -> _UpConn:
        idle = self._idle.get(key)
        while idle:
            c = idle.pop()
            if not c.closed:
                c.reset()
                return c
        try:
            _, proto = await asyncio.wait_for(
                self.loop.create_connection(lambda: _UpConn(self, key), key[0], key[1]), connect_timeout)
        except OSError as e:
            raise aiohttp.ClientOSError(e.errno or 0, str(e)) from e
        self._all.add(proto)
        return proto

    def release(self, c: _UpConn) -> None:
        self._idle.setdefault(c.key, []).append(c)

    def post(self, url: str, data: bytes | None = None, headers: Any = None, timeout: Any = None) -> _RawCall:
        return _RawCall(self, "POST", url, data, headers, timeout)

    def get(self, url: str, headers: Any = None, timeout: Any = None) -> _RawCall:
        return _RawCall(self, "GET", url, None, headers, timeout)

    async def close(self) -> None:
        for c in list(self._all):
            c.close()
        self._idle.clear()
        self._all.clear()
        await asyncio.sleep(0)  # let the transports run connection_lost


def _raw() -> Any:
    return RawSession()


FACTORIES: dict[str, Callable[[], Any]] = {
    "aiohttp-limit100": _aiohttp(limit=100, limit_per_host=0),
    "aiohttp-force-close": _aiohttp(force_close=True),
    "aiohttp-decompress-off": lambda: _aiohttp()(auto_decompress=False),
    "httpx": HttpxSession,
    "raw": _raw,
}
