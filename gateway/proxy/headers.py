"""Header rules between the client and an engine, both ways.

Pure functions, unit-tested: they keep the client's key away from engines and keep
framing headers from leaking between the two connections.
"""

from __future__ import annotations

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
# `x-api-key` is the client's gateway key on the Anthropic routes: never an engine's business.
_DROP_REQUEST = _HOP_BY_HOP | {
    b"host", b"authorization", b"x-api-key", b"accept-encoding", b"x-request-id", b"expect", b"cookie",
}  # fmt: skip
# Response headers the gateway sets itself.
_DROP_RESPONSE = _HOP_BY_HOP | {b"x-request-id", b"server", b"date"}


def request_headers(
    client: RawHeaders, request_id: str, api_key: str | None, content_type: str = "application/json"
) -> dict[str, str]:
    """Headers for the engine: the client's, minus hop-by-hop, with our key and request id."""
    out: dict[str, str] = {}
    for k, v in client:
        if k in _DROP_REQUEST:
            continue
        out[k.decode("latin-1")] = v.decode("latin-1")
    out["accept-encoding"] = "identity"  # we relay bytes; never make us decode a stream
    out["x-request-id"] = request_id
    out["content-type"] = content_type
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
