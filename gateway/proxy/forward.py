"""Forwarding one request to a backend of its pool and relaying the answer.

Steps: take a backend slot (the pool may queue us) -> send the body -> on a connection
failure, a 502/503 or an engine reporting its own death (`engine_errors.engine_dead`)
before anything reached the client, try another backend -> relay
(a stream event by event as it arrives, or a whole JSON body) -> release the slot in
`finally`, whatever happened, and feed a completed answer's timing to the balancer. Client disconnects are handled by the caller cancelling
the task running `forward`; cancellation closes the engine connection, so the engine
aborts the request and frees its batch slot.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import time
from collections.abc import Callable

import aiohttp
import orjson

from ..context import RequestContext
from ..errors import GatewayError
from ..routing.backend import Backend
from ..routing.pool import Pool
from ..routing.request import Completion, completion_from_usage
from ..server.exchange import Exchange, RawHeaders
from . import keepalive, n_usage, sse
from .bodyedit import request_for_backend
from .engine_errors import engine_dead
from .headers import request_headers, response_headers
from .plan import Plan
from .usage import Usage

log = logging.getLogger("gateway.proxy")

_SSE_HEADERS: RawHeaders = [
    (b"content-type", b"text/event-stream; charset=utf-8"),
    (b"cache-control", b"no-cache"),
    (b"x-accel-buffering", b"no"),
]
_SSE_HEADER_NAMES = frozenset(k for k, _ in _SSE_HEADERS)
_RETRY_STATUSES = frozenset({502, 503})
_CONNECT_ERRORS = (
    aiohttp.ClientConnectorError,
    aiohttp.ServerDisconnectedError,
    aiohttp.ClientOSError,
)

async def forward(
    session: aiohttp.ClientSession, pool: Pool, ctx: RequestContext, plan: Plan, out: Exchange,
    stream_keepalive: float | None = None,
) -> None:
    """Forward and relay; raises GatewayError only while nothing has been sent to the client.

    `stream_keepalive` (seconds, streamed requests only): see `keepalive`; once its early
    headers went out, a failure ends the stream with an error event instead of raising.
    """
    early = keepalive.EarlyStart()
    try:
        await _forward(session, pool, ctx, plan, out, early, stream_keepalive if ctx.stream else None)
    except GatewayError as e:
        if not early.started:
            raise
        ctx.error = ctx.error or e.message
        await out.end(plan.stream_error(_error_message(e), None))


async def _forward(
    session: aiohttp.ClientSession, pool: Pool, ctx: RequestContext, plan: Plan, out: Exchange,
    early: keepalive.EarlyStart, every: float | None,
) -> None:
    tried: set[Backend] = set()
    last_error: GatewayError | None = None
    request = pool.route_request(ctx.endpoint, plan.parsed)
    # A pinned request has one possible backend: every other one is excluded, and a
    # retry elsewhere could only be answered "not found".
    others = frozenset(b for b in pool.backends if b is not plan.pinned) if plan.pinned is not None else frozenset()
    for attempt in range(pool.cfg.retries + 1 if plan.pinned is None else 1):
        if every is None:
            backend = await pool.acquire(request, others | tried)
        else:
            backend = await keepalive.acquire(pool, request, others | tried, every=every, ctx=ctx, out=out,
                                              headers=_stream_headers([], ctx, plan), early=early)
        ctx.backend = backend
        ctx.attempts = attempt + 1
        try:
            retry = await _attempt(session, pool, backend, ctx, plan, out, early)
        finally:
            pool.release(backend, request, _completion(ctx, out.held_back) if answered(ctx) else None)
        if retry is None:
            return
        tried.add(backend)
        last_error = retry
        log.info("request %s: backend %s failed (%s); %s", ctx.request_id, backend.id, retry.message,
                 "retrying" if attempt < pool.cfg.retries else "giving up")
    assert last_error is not None
    raise last_error


def _error_message(e: GatewayError) -> str:
    """The engine's own message when it sent one (e.g. vLLM's 400 on a too-long prompt)."""
    if e.raw_body:
        try:
            err = orjson.loads(e.raw_body)
            inner = err.get("error", err) if isinstance(err, dict) else None
            msg = inner.get("message") if isinstance(inner, dict) else None
            if isinstance(msg, str) and msg:
                return msg
        except orjson.JSONDecodeError:
            pass
    return e.message


def answered(ctx: RequestContext) -> bool:
    """An answer came back from this attempt (complete or cut short)."""
    return ctx.upstream_started is not None and ctx.first_byte_at is not None


def _completion(ctx: RequestContext, held_back: bool = False) -> Completion:
    """Balancer feedback: how the answer went (timing feeds the speed estimates, usage the
    prefix-cache figures).

    `held_back`: the relay waited for a slow client, so the stream's duration is the
    client's, not the engine's; it is left out (0.0: no speed learnt from it). Its first
    byte came before any wait, so its TTFT stands."""
    assert ctx.upstream_started is not None and ctx.first_byte_at is not None
    # A non-stream answer's first byte is its last: it says nothing about time to first token.
    ttft = ctx.first_byte_at - ctx.upstream_started if ctx.stream else None
    duration = 0.0 if held_back else time.monotonic() - ctx.upstream_started
    return completion_from_usage(ctx.completed, ctx.usage, ttft, duration)


async def _attempt(
    session: aiohttp.ClientSession, pool: Pool, backend: Backend, ctx: RequestContext, plan: Plan, out: Exchange,
    early: keepalive.EarlyStart,
) -> GatewayError | None:
    """One try on one backend. Returns an error worth retrying elsewhere, or None when done."""
    t = pool.cfg.timeouts
    timeout = _client_timeout(t.connect, t.stream_idle if ctx.stream else t.first_byte)
    headers = request_headers(plan.client_headers, ctx.request_id, backend.api_key, plan.content_type)
    served = backend.served_model or plan.served_default
    body = plan.retarget(served) if plan.retarget is not None else request_for_backend(plan.body, plan.parsed, served)
    url = (_root_url(backend.url) if plan.upstream_root else backend.url) + plan.path
    started = time.monotonic()
    if ctx.upstream_started is None:
        ctx.upstream_started = started
    try:
        async with session.post(url, data=body, headers=headers, timeout=timeout) as resp:
            if resp.status >= 400:
                body = await resp.read()
                ctx.upstream_time += time.monotonic() - started
                dead = engine_dead(resp.status, body)
                if dead:
                    # Every later request there fails too until the supervisor (or whoever
                    # runs it) restarts it: out of rotation now, like a refused connection.
                    backend.mark_connect_failure(f"engine died: HTTP {resp.status} {body[:200]!r}")
                if resp.status in _RETRY_STATUSES or dead:
                    err = _upstream_error(plan, resp.status, body, resp.headers.get("content-type"))
                    if ctx.attempts <= pool.cfg.retries:
                        return err
                    raise err
                raise _upstream_error(plan, resp.status, body, resp.headers.get("content-type"))
            is_sse = "text/event-stream" in resp.headers.get("content-type", "")
            if ctx.stream and is_sse:
                await _relay_stream(resp, ctx, plan, out, started, early)
            elif early.started:
                # Headers promised a stream; a whole body cannot follow them.
                await resp.read()
                ctx.upstream_time += time.monotonic() - started
                raise GatewayError(502, f"Backend {backend.id} answered a streamed request without a stream.",
                                   "upstream_error")
            else:
                await _relay_body(resp, ctx, plan, out, started)
            return None
    except _CONNECT_ERRORS as e:
        if ctx.first_byte_at is not None:
            raise
        backend.mark_connect_failure(f"{type(e).__name__}: {e}")
        return GatewayError(502, f"Backend {backend.id} is unreachable: {e}", "upstream_unreachable")
    except TimeoutError:
        if ctx.first_byte_at is not None:
            raise
        raise GatewayError(
            504, f"Backend {backend.id} did not answer within {timeout.sock_read:g}s.", "upstream_timeout"
        ) from None


@functools.lru_cache(maxsize=256)
def _client_timeout(connect: float, read: float) -> aiohttp.ClientTimeout:
    # A pool's timeouts are fixed at config load; building the (attrs, validated) object
    # per request was measurable on the hot path. Immutable, so one is shared.
    return aiohttp.ClientTimeout(total=None, sock_connect=connect, sock_read=read)


def _root_url(base: str) -> str:
    """The engine's root URL from its base URL (`http://h:p/v1` -> `http://h:p`)."""
    return base[:-3] if base.endswith("/v1") else base


def _upstream_error(plan: Plan, status: int, body: bytes, content_type: str | None) -> GatewayError:
    if plan.rewrite_error is not None:
        status, body = plan.rewrite_error(status, body, content_type)
    return GatewayError(status, f"backend answered {status}", "upstream_error", raw_body=body)


async def _relay_body(
    resp: aiohttp.ClientResponse, ctx: RequestContext, plan: Plan, out: Exchange, started: float
) -> None:
    body = await resp.read()
    ctx.upstream_time += time.monotonic() - started
    if plan.recount_choices is not None and resp.status < 400:
        body, ctx.usage_estimated = await asyncio.to_thread(n_usage.count_every_choice, body, plan.recount_choices)
    ctx.usage = plan.body_usage(body)
    if plan.rewrite_body is not None:
        body = plan.rewrite_body(body)
    if ctx.usage is None:  # kept only for the estimate, which the engine's usage makes moot
        ctx.keep_delivered(body)
    headers = response_headers(resp.headers)
    headers.append((b"content-type", resp.headers.get("content-type", "application/json").encode("latin-1")))
    headers.append((b"x-request-id", ctx.request_id.encode()))
    if plan.extra_headers:
        headers.extend(plan.extra_headers)
    ctx.status = resp.status
    ctx.first_byte_at = time.monotonic()
    await out.respond(resp.status, headers, body)
    ctx.completed = True


def _stream_headers(upstream: RawHeaders, ctx: RequestContext, plan: Plan) -> RawHeaders:
    headers = [h for h in upstream if h[0] not in _SSE_HEADER_NAMES]
    headers.extend(_SSE_HEADERS)
    headers.append((b"x-request-id", ctx.request_id.encode()))
    if plan.extra_headers:
        headers.extend(plan.extra_headers)
    return headers


async def _relay_stream(
    resp: aiohttp.ClientResponse, ctx: RequestContext, plan: Plan, out: Exchange, started: float,
    early: keepalive.EarlyStart,
) -> None:
    headers = _stream_headers(response_headers(resp.headers), ctx, plan)
    framer = sse.EventFramer()
    rewrite = plan.rewrite_event
    event_usage = plan.event_usage
    ends = plan.stream_ends  # typed-event streams (Responses, Messages) end on an event, not [DONE]
    keep = ctx.keep_delivered
    last: bytes | None = None

    async def start() -> None:
        if not early.started:  # else the keep-alive sent 200 and these headers stay unsent
            ctx.status = resp.status
            await out.start(resp.status, headers)
        ctx.first_byte_at = time.monotonic()

    try:
        readany = resp.content.readany  # ours and aiohttp's: b"" at the end of the body
        while chunk := await readany():
            events: list[bytes] = []
            for ev in framer.feed(chunk):
                if sse.is_done(ev):
                    ctx.completed = True
                    if plan.before_done is not None:
                        held = plan.before_done()
                        if held:
                            keep(held)
                            events.append(held)
                elif ev.startswith(b"data:") or ev.startswith(b"event:"):
                    usage = event_usage(ev)
                    if usage is not None:
                        ctx.usage = usage
                        if plan.strip_usage:
                            if sse.is_usage_only(ev):
                                continue
                            ev = sse.without_usage(ev)
                    if rewrite is not None:
                        new = rewrite(ev)
                        if new is None:
                            continue
                        ev = new
                    keep(ev)
                    if ends is not None and ends(ev):
                        ctx.completed = True
                    last = ev
                events.append(ev)
            if not events:
                continue
            if ctx.first_byte_at is None:
                await start()
            await out.write(events[0] if len(events) == 1 else b"".join(events))
        if not ctx.completed:
            partial = " (partial event dropped)" if framer.rest() else ""
            end = "its final event" if ends is not None else "[DONE]"
            raise aiohttp.ClientPayloadError(f"stream ended without {end}{partial}")
    except asyncio.CancelledError:
        # The client left: what the engine already sent may sit unread in our buffer.
        _take_buffered(resp, framer, ctx, event_usage)
        raise
    except (aiohttp.ClientError, TimeoutError) as e:
        # The engine died, stalled past stream_idle, or cut the stream: end it cleanly
        # with an error event the SDKs understand, never a hang.
        ctx.error = f"{type(e).__name__}: {e}" if str(e) else type(e).__name__
        if isinstance(e, TimeoutError):
            msg = "The backend stopped sending for longer than the stream idle timeout."
        else:
            msg = f"The backend failed mid-stream: {ctx.error}"
        if ctx.first_byte_at is None:
            await start()
        await out.end(plan.stream_error(msg, last))
        ctx.upstream_time += time.monotonic() - started
        return
    ctx.upstream_time += time.monotonic() - started
    if ctx.first_byte_at is None:
        await start()
    await out.end()


def _take_buffered(
    resp: aiohttp.ClientResponse, framer: sse.EventFramer, ctx: RequestContext, event_usage: Callable[[bytes], Usage | None]
) -> None:
    """Account for what the engine sent that we had not relayed when the client left.

    Read without waiting: the engine's latest running usage (continuous_usage_stats) is
    its own figure; otherwise the events join what the estimate counts, since the engine
    generated (and counted) those tokens whether or not the client saw them.
    """
    try:
        data = resp.content.read_nowait()
    except Exception:  # the connection may already be torn down; nothing to take then
        return
    for ev in framer.feed(data) if data else ():
        if not ev.startswith(b"data:") or sse.is_done(ev):
            continue
        usage = event_usage(ev)
        if usage is not None:
            ctx.usage = usage
        elif ctx.usage is None:
            ctx.keep_delivered(ev)
