"""The ASGI app behind our HTTP server, for every path that is not an inference route.

/health, /v1/models, /metrics and the admin API (FastAPI) are answered by the ASGI
app (`server.app.GatewayApp`); this adapter gives it a scope, a `receive` that hands
over the (already read) body, and a `send` that writes to our connection. Correctness
over speed: these paths are not the hot path.
"""

from __future__ import annotations

import asyncio
from typing import Any

from .asgi import Message, Scope
from .http import HttpExchange


async def call_asgi(app: Any, ex: HttpExchange, max_body: int) -> None:
    """Run one request through `app`; the exchange ends up answered (500 if the app sent nothing)."""
    conn = ex.conn
    transport = conn.transport
    server = transport.get_extra_info("sockname") if transport is not None else None
    client = transport.get_extra_info("peername") if transport is not None else None
    scope: Scope = {
        "type": "http",
        "asgi": {"version": "3.0", "spec_version": "2.3"},
        "http_version": "1.1",
        "method": ex.method,
        "scheme": "http",
        "path": ex.path,
        "raw_path": ex.path.encode("latin-1"),
        "query_string": ex.query,
        "root_path": "",
        "headers": ex.headers,
        "server": tuple(server[:2]) if server else None,
        "client": tuple(client[:2]) if client else None,
        "state": {},
    }
    body = await ex.body(max_body)
    sent_body = False
    gone: asyncio.Future[None] = asyncio.get_running_loop().create_future()
    status = 0
    headers: list[tuple[bytes, bytes]] = []
    has_length = False

    async def receive() -> Message:
        nonlocal sent_body
        if not sent_body:
            sent_body = True
            return {"type": "http.request", "body": body, "more_body": False}
        await gone  # only a disconnect comes after the body; the connection cancels us then
        return {"type": "http.disconnect"}

    async def send(msg: Message) -> None:
        nonlocal status, headers, has_length
        kind = msg["type"]
        if kind == "http.response.start":
            status = msg["status"]
            headers = [(bytes(k).lower(), bytes(v)) for k, v in msg.get("headers", [])]
            has_length = any(k == b"content-length" for k, _ in headers)
            return
        if kind != "http.response.body":
            return
        data: bytes = msg.get("body", b"")
        more: bool = msg.get("more_body", False)
        if not ex.responded:
            if not more:
                headers = [h for h in headers if h[0] != b"content-length"]
                return await ex.respond(status, headers, data)
            if has_length:  # a sized body in several pieces: write it as it comes
                ex.responded = True
                ex.status = status
                conn.write(b"".join(ex._head(status, headers, b"")))
            else:
                await ex.start(status, headers)
        if ex.streaming:
            await ex.write(data)
            if not more:
                await ex.end()
        elif data and ex.method != "HEAD":
            conn.write(data)

    await app(scope, receive, send)
