"""Thin ASGI helpers: read a bounded body, send bytes, cancel on disconnect.

`gateway serve` answers the inference routes on its own protocol (`server.http`); this
module is what lets the same pipeline run under any ASGI server too (`AsgiExchange`),
and what the small endpoints and the admin app answer through.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Iterable, MutableMapping
from typing import Any

import orjson

from ..errors import GatewayError
from .exchange import ClientDisconnected, Interruption, RawHeaders

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
__all__ = ["AsgiExchange", "ClientDisconnected", "RawHeaders", "Receive", "Scope", "Send"]


def header(scope: Scope, name: bytes) -> str | None:
    for k, v in scope["headers"]:
        if k == name:
            return v.decode("latin-1")
    return None


async def read_body(scope: Scope, receive: Receive, limit: int) -> bytes:
    """The whole request body, or 413 as soon as it is known to exceed `limit`."""
    declared = header(scope, b"content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise _too_large(limit)
    chunks: list[bytes] = []
    size = 0
    while True:
        msg = await receive()
        if msg["type"] == "http.disconnect":
            raise ClientDisconnected()
        chunk = msg.get("body", b"")
        if chunk:
            size += len(chunk)
            if size > limit:
                raise _too_large(limit)
            chunks.append(chunk)
        if not msg.get("more_body", False):
            break
    return chunks[0] if len(chunks) == 1 else b"".join(chunks)


def _too_large(limit: int) -> GatewayError:
    return GatewayError(413, f"Request body is larger than the limit of {limit} bytes.", "request_too_large")


async def send_response(
    send: Send, status: int, body: bytes, headers: Iterable[tuple[bytes, bytes]] = (), content_type: bytes = b"application/json"
) -> None:
    hdrs: RawHeaders = [(b"content-type", content_type), (b"content-length", str(len(body)).encode())]
    hdrs.extend(headers)
    await send({"type": "http.response.start", "status": status, "headers": hdrs})
    await send({"type": "http.response.body", "body": body})


async def send_json(send: Send, status: int, obj: Any, headers: Iterable[tuple[bytes, bytes]] = ()) -> None:
    await send_response(send, status, orjson.dumps(obj), headers)


def encode_headers(h: dict[str, str]) -> RawHeaders:
    return [(k.encode("latin-1"), v.encode("latin-1")) for k, v in h.items()]


async def run_until_disconnect(work: Awaitable[None], receive: Receive) -> bool:
    """Run `work` in this task; if the client disconnects first, cancel it and return True.

    The request body must already be consumed. Cancelling the proxy's work closes the
    engine connection, so the engine aborts the request and frees its batch slot.
    """
    task = asyncio.current_task()
    assert task is not None
    finished = False
    disconnected = False

    async def watch() -> None:
        nonlocal disconnected
        while True:
            msg = await receive()
            if msg["type"] == "http.disconnect":
                break
        if not finished:
            disconnected = True
            task.cancel()

    watcher = asyncio.get_running_loop().create_task(watch())
    try:
        await work
        finished = True
    except asyncio.CancelledError:
        if not disconnected:
            raise
        task.uncancel()
    finally:
        finished = True
        watcher.cancel()
    return disconnected


class AsgiExchange:
    """`server.exchange.Exchange` over an ASGI scope/receive/send (one message per write)."""

    __slots__ = ("scope", "receive", "send", "method", "path", "headers", "held_back")

    def __init__(self, scope: Scope, receive: Receive, send: Send) -> None:
        self.scope, self.receive, self.send = scope, receive, send
        self.method: str = scope["method"]
        self.path: str = scope["path"]
        self.headers: RawHeaders = scope["headers"]
        # The ASGI server's `send` waits for a slow client without telling: unknown, so
        # the engine's timing is taken as it comes.
        self.held_back = False

    def header(self, name: bytes) -> str | None:
        return header(self.scope, name)

    async def body(self, limit: int) -> bytes:
        return await read_body(self.scope, self.receive, limit)

    async def respond(self, status: int, headers: RawHeaders, body: bytes) -> None:
        headers = [*headers, (b"content-length", str(len(body)).encode())]
        await self.send({"type": "http.response.start", "status": status, "headers": headers})
        await self.send({"type": "http.response.body", "body": body})

    async def start(self, status: int, headers: RawHeaders) -> None:
        await self.send({"type": "http.response.start", "status": status, "headers": headers})

    async def write(self, data: bytes) -> None:
        await self.send({"type": "http.response.body", "body": data, "more_body": True})

    async def end(self, data: bytes = b"") -> None:
        await self.send({"type": "http.response.body", "body": data, "more_body": False})

    async def run(self, work: Awaitable[None]) -> Interruption | None:
        # ASGI servers drain and cancel on their own terms; only disconnects are seen here.
        return "disconnected" if await run_until_disconnect(work, self.receive) else None
