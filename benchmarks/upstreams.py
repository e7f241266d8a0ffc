"""HTTP clients to the engines, interchangeable behind the subset of aiohttp the gateway uses.

The gateway talks to engines through `state.http`, from `gateway.proxy.client.make_session(kind)`:
by default its own keep-alive client (`gateway.proxy.client.RawSession`, asyncio protocols +
httptools), or aiohttp's session (`server.upstream_client: aiohttp`). The proxy uses `session.post(url, data=, headers=,
timeout=)` as an async context manager, then `resp.status`, `resp.headers`,
`await resp.read()` and `resp.content.iter_any()`; discovery uses `session.get` and
`resp.json()`. Each factory below returns an object with that surface, so the launcher
(benchmarks.launch --upstream KIND) can swap clients without touching the hot path:

- aiohttp: the gateway's fallback session (`gateway.proxy.client._aiohttp_session`), and
  variants of it: the connector's limit, keep-alive off, decompression off.
- httpx: `httpx.AsyncClient` with its default transport (encode/httpx #3215 reports its
  pool is slow under concurrency).
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from typing import Any

import aiohttp
import orjson

from gateway.proxy.client import _aiohttp_session

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


def _ignore_kind(make: Callable[[], Any]) -> Callable[..., Any]:
    """gateway.server.app calls make_session(cfg.server.upstream_client): accept and ignore it."""

    def factory(_kind: str | None = None) -> Any:
        return make()

    return factory


# Replacements for gateway.server.app.make_session, by --upstream name. "raw" (the default) is not
# here: it is the gateway's own `gateway.proxy.client.RawSession`, used unpatched.
FACTORIES: dict[str, Callable[..., Any]] = {
    "aiohttp": _ignore_kind(_aiohttp_session),  # the gateway's fallback (server.upstream_client: aiohttp)
    "aiohttp-limit100": _ignore_kind(_aiohttp(limit=100, limit_per_host=0)),
    "aiohttp-force-close": _ignore_kind(_aiohttp(force_close=True)),
    "aiohttp-decompress-off": _ignore_kind(lambda: _aiohttp()(auto_decompress=False)),
    "httpx": _ignore_kind(HttpxSession),
}
