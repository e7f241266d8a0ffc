"""One request and its response as the pipeline sees them, whatever server carries them.

The pipeline (`proxy.pipeline.handle`) and the relay (`proxy.forward`) talk to this
interface only, so they run unchanged under our own HTTP/1.1 protocol (`server.http`,
bytes straight to the socket) and under any ASGI server (`server.asgi.AsgiExchange`).

What blocks: `body` waits for the client's bytes (bounded by the server's body
timeout). `write` never waits on our own server: while the client does not read, bytes
queue up to the server's `relay_buffer_bytes`, and past that (or after `write_timeout`
without progress) the connection is reset and the request cancelled ("stalled"). Under
ASGI, `write` waits while the client is not reading, as the ASGI server decides.
"""

from __future__ import annotations

from collections.abc import Awaitable
from typing import Literal, Protocol

RawHeaders = list[tuple[bytes, bytes]]

# Why `Exchange.run` stopped its work early: the client went away, it stopped reading
# (the server cut it), or the server is shutting down and the drain period is over (the
# stream still gets a proper ending).
Interruption = Literal["disconnected", "stalled", "shutdown"]


class ClientDisconnected(Exception):
    """The client went away while we were reading its request."""


class Exchange(Protocol):
    method: str
    path: str
    headers: RawHeaders  # lower-case names, in the order received
    # The relay waited for this client at least once (backpressure): the response's
    # timing then says more about the client than about the engine.
    held_back: bool

    def header(self, name: bytes) -> str | None:
        """The first value of a (lower-case) header, or None when absent."""
        ...

    async def body(self, limit: int) -> bytes:
        """The whole request body; GatewayError 413 past `limit`, ClientDisconnected if the client left."""
        ...

    async def respond(self, status: int, headers: RawHeaders, body: bytes) -> None:
        """A complete response; `content-length` is added here."""
        ...

    async def start(self, status: int, headers: RawHeaders) -> None:
        """Begin a streamed response (chunked); follow with `write`s and one `end`."""
        ...

    async def write(self, data: bytes) -> None:
        """One piece of a streamed body, sent at once (see the module's note on what blocks)."""
        ...

    async def end(self, data: bytes = b"") -> None:
        """The last piece of a streamed body."""
        ...

    async def run(self, work: Awaitable[None]) -> Interruption | None:
        """Run `work` in this task; cancel it if the client leaves or the server must stop.

        The body must already be read. Cancelling the relay closes the engine connection,
        so the engine aborts the request and frees its batch slot.
        """
        ...
