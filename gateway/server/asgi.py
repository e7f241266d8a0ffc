"""Thin ASGI helpers for the hot path: read a bounded body, send bytes, cancel on disconnect.

The inference routes are plain ASGI (no framework request/response objects) because
every microsecond on this path is paid per request and per streamed event.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Iterable, MutableMapping
from typing import Any

import orjson

from ..errors import GatewayError

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
RawHeaders = list[tuple[bytes, bytes]]


class ClientDisconnected(Exception):
    """The client went away while we were reading its request."""


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
