"""Keeping a streamed request's connection busy while it waits for a backend (a model loading).

Clients and proxies in front of the gateway give up on a response that sends nothing for a
while: Open WebUI with `AIOHTTP_CLIENT_STREAM_IDLE_TIMEOUT` (aiohttp's `sock_read`, which
also runs while waiting for the response headers), nginx's `proxy_read_timeout` (60 s by
default). A request queued for an engine that is starting on demand sends nothing until the
engine answers, which can take minutes. With `server.stream_keepalive: S`, a streamed request
still waiting for a backend after S seconds gets its response headers (200,
text/event-stream) and then an SSE comment line every S seconds until the answer starts.
SSE parsers skip comment lines (OpenAI's SDKs, Open WebUI, EventSource).

The price: the status is committed. Whatever fails after that (the load times out, the engine
answers 4xx, every retry fails) reaches the client as the dialect's error event inside the
stream, not as an HTTP status, so a client that retries on 503 will not retry it. Hence off
by default. Non-streamed requests are never affected: they have no way to carry a keep-alive.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass

from ..context import RequestContext
from ..routing.backend import Backend
from ..routing.pool import Pool
from ..routing.request import RouteRequest
from ..server.exchange import Exchange, RawHeaders

COMMENT = b": waiting for the model\n\n"


@dataclass
class EarlyStart:
    """Whether the response headers went out before any backend answered (and when)."""

    at: float | None = None

    @property
    def started(self) -> bool:
        return self.at is not None


async def acquire(
    pool: Pool,
    request: RouteRequest,
    exclude: frozenset[Backend],
    *,
    every: float,
    ctx: RequestContext,
    out: Exchange,
    headers: RawHeaders,
    early: EarlyStart,
) -> Backend:
    """`pool.acquire`, sending the headers and then a comment every `every` seconds meanwhile.

    Raises what `pool.acquire` raises (a GatewayError after `early.started` is the caller's
    to turn into an error event). Cancelled (the client left), it leaves the pool's queue,
    or hands back a backend granted in the same instant.
    """
    task = asyncio.ensure_future(pool.acquire(request, exclude))
    try:
        while True:
            done, _ = await asyncio.wait((task,), timeout=every)
            if done:
                return task.result()
            if early.at is None:
                ctx.status = 200
                await out.start(200, headers)
                early.at = time.monotonic()
            await out.write(COMMENT)
    except BaseException:
        if not task.done():
            task.cancel()
            try:
                await task
            except BaseException:  # noqa: BLE001 - its cancellation or error is not ours to raise
                pass
        elif not task.cancelled() and task.exception() is None:
            pool.release(task.result(), request)  # granted, but we are leaving (e.g. a write failed)
        raise
