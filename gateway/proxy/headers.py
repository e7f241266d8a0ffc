"""Talking to engines: the shared HTTP client and the header rules both ways.

One client for the whole process, created at start-up, with keep-alive connections per
engine (`httpclient.RawSession`, or aiohttp's session when configured). Header rules (pure functions, unit-tested) keep the client's key away from
engines and keep framing headers from leaking between the two connections.
"""

from __future__ import annotations

from typing import Any

import aiohttp

from ..server.asgi import RawHeaders

# Hop-by-hop (RFC 9110 7.6.1) plus framing and encoding headers that describe one
# connection's bytes, not the message: forwarding them corrupts the other side.
_HOP_BY_HOP = frozenset(
    {
        b"connection",
        b"keep-alive",
        b"proxy-authenticate",
        b"proxy-authorization",
        b"te",
        b"trailer",
        b"transfer-encoding",
        b"upgrade",
        b"content-length",
        b"content-encoding",
    }
)
# Request headers we set ourselves or must not pass on.
_DROP_REQUEST = _HOP_BY_HOP | {b"host", b"authorization", b"accept-encoding", b"x-request-id", b"expect", b"cookie"}
# Response headers the gateway sets itself.
_DROP_RESPONSE = _HOP_BY_HOP | {b"x-request-id", b"server", b"date"}


def request_headers(client: RawHeaders, request_id: str, api_key: str | None) -> dict[str, str]:
    """Headers for the engine: the client's, minus hop-by-hop, with our key and request id."""
    out: dict[str, str] = {}
    for k, v in client:
        if k in _DROP_REQUEST:
            continue
        out[k.decode("latin-1")] = v.decode("latin-1")
    out["accept-encoding"] = "identity"  # we relay bytes; never make us decode a stream
    out["x-request-id"] = request_id
    out["content-type"] = "application/json"
    if api_key:
        out["authorization"] = f"Bearer {api_key}"
    return out


def response_headers(upstream: aiohttp.typedefs.LooseHeaders | None) -> RawHeaders:
    """The engine's response headers worth relaying (content-type is set by the caller)."""
    out: RawHeaders = []
    if not upstream:
        return out
    items = upstream.items() if hasattr(upstream, "items") else upstream
    for k, v in items:
        kb = k.lower().encode("latin-1") if isinstance(k, str) else bytes(k).lower()
        if kb in _DROP_RESPONSE or kb == b"content-type":
            continue
        out.append((kb, v.encode("latin-1") if isinstance(v, str) else bytes(v)))
    return out


def make_session(kind: str = "raw") -> Any:
    """The shared client to engines: `raw` (httpclient.RawSession) or `aiohttp`."""
    if kind == "raw":
        from .client import RawSession

        return RawSession()
    return _aiohttp_session()


def _aiohttp_session() -> aiohttp.ClientSession:
    connector = aiohttp.TCPConnector(
        limit=0,  # per-backend concurrency is enforced by the pools, not here
        limit_per_host=0,
        keepalive_timeout=60,
        ttl_dns_cache=300,
        enable_cleanup_closed=False,
    )
    return aiohttp.ClientSession(
        connector=connector,
        timeout=aiohttp.ClientTimeout(total=None),
        auto_decompress=True,
        skip_auto_headers=("User-Agent",),
        # Engine JSON can be large (embeddings); the default 8 KiB line limit is for headers only.
        read_bufsize=2**18,
    )
