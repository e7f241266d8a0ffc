"""The inference routes (/v1/chat/completions, /v1/completions, /v1/embeddings), top-down.

    authenticate -> read body -> resolve model -> admit (rate limits) -> plan -> forward -> finish

Each step is a named function; each failure is a GatewayError that `handle` turns into
an OpenAI-shaped response while nothing has been sent yet. `finish` runs on every path
and hands the request's record to metering, metrics and the rate limiter.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from typing import Any

import orjson

from ..context import RequestContext
from ..errors import GatewayError, invalid_api_key, invalid_request, model_not_found
from ..keys.auth import Key, bearer
from ..routing.pool import Pool
from ..server.asgi import (
    ClientDisconnected,
    Receive,
    Scope,
    Send,
    encode_headers,
    header,
    read_body,
    send_response,
)
from ..state import GatewayState
from . import plan as rewrites
from .forward import Plan, forward
from .sse import with_include_usage

log = logging.getLogger("gateway.inference")

# ASGI path -> (endpoint name, path under the engine's /v1, pool kind that serves it)
ROUTES: dict[str, tuple[str, str, str]] = {
    "/v1/chat/completions": ("chat", "/chat/completions", "chat"),
    "/v1/completions": ("completions", "/completions", "chat"),
    "/v1/embeddings": ("embeddings", "/embeddings", "embedding"),
}


def new_request_id() -> str:
    return "req-" + os.urandom(12).hex()


async def handle(state: GatewayState, scope: Scope, receive: Receive, send: Send) -> None:
    endpoint, upstream_path, kind = ROUTES[scope["path"]]
    ctx = RequestContext(request_id=header(scope, b"x-request-id") or new_request_id(), endpoint=endpoint)
    try:
        if state.draining:
            raise GatewayError(503, "The gateway is shutting down.", "shutting_down", headers={"retry-after": "1"})
        ctx.key = authenticate(state, scope)
        raw = await read_body(scope, receive, state.config.server.max_body_bytes)
        body = parse_body(raw)
        pool = resolve(state, ctx.key, body, kind)
        describe(ctx, scope, pool, body)
        if state.limiter is not None:
            ctx.admission = await state.limiter.admit(ctx.key, ctx)
        plan = make_plan(state, ctx, pool, raw, body, upstream_path, scope)
        assert state.http is not None
        await _run_until_disconnect(forward(state.http, pool, ctx, plan, send), receive, ctx)
    except GatewayError as e:
        ctx.error = ctx.error or e.message
        if ctx.status == 0:
            ctx.status = e.status
            headers = dict(e.headers)
            if state.limiter is not None and ctx.admission is not None:
                headers.update(state.limiter.headers(ctx.admission))
            headers["x-request-id"] = ctx.request_id
            await send_response(send, e.status, e.body(), encode_headers(headers))
    except ClientDisconnected:
        ctx.error = "client disconnected before sending the whole request"
        ctx.status = 499
    finally:
        ctx.ended = time.monotonic()
        await finish(state, ctx)


def authenticate(state: GatewayState, scope: Scope) -> Key:
    key = state.keyring.lookup(bearer(header(scope, b"authorization")))
    if key is None:
        raise invalid_api_key(
            "Missing API key: send `Authorization: Bearer <key>`."
            if header(scope, b"authorization") is None
            else "Invalid API key provided."
        )
    return key


def parse_body(raw: bytes) -> dict[str, Any]:
    if not raw:
        raise invalid_request("The request body is empty; expected a JSON object.", code="invalid_json")
    try:
        body = orjson.loads(raw)
    except orjson.JSONDecodeError as e:
        raise invalid_request(f"The request body is not valid JSON: {e}", code="invalid_json") from None
    if not isinstance(body, dict):
        raise invalid_request("The request body must be a JSON object.", code="invalid_json")
    return body


def resolve(state: GatewayState, key: Key, body: dict[str, Any], kind: str) -> Pool:
    model = body.get("model")
    if model is None:
        raise invalid_request("You must provide a model parameter.", param="model", code="missing_model")
    if not isinstance(model, str):
        raise invalid_request("`model` must be a string.", param="model", code="invalid_type")
    pool = state.resolve(model)
    # A model outside the key's allowlist is indistinguishable from one that does not exist.
    if pool is None or not key.allows(pool.name):
        raise model_not_found(model)
    if pool.cfg.kind != kind:
        what = "an embedding model" if pool.cfg.kind == "embedding" else "a chat/completion model"
        endpoint = "/v1/embeddings" if pool.cfg.kind == "embedding" else "/v1/chat/completions or /v1/completions"
        raise invalid_request(
            f"`{model}` is {what}; use {endpoint}.", param="model", code="model_not_supported_on_endpoint"
        )
    return pool


def describe(ctx: RequestContext, scope: Scope, pool: Pool, body: dict[str, Any]) -> None:
    stream = body.get("stream", False)
    if stream is not None and not isinstance(stream, bool):
        raise invalid_request("`stream` must be a boolean.", param="stream", code="invalid_type")
    ctx.pool = pool
    ctx.model_requested = body["model"]
    ctx.body = body
    ctx.stream = bool(stream) and ctx.endpoint != "embeddings"
    opts = body.get("stream_options")
    ctx.include_usage_requested = isinstance(opts, dict) and opts.get("include_usage") is True
    user = body.get("user")
    ctx.user = user if isinstance(user, str) and user else header(scope, b"x-openwebui-user-id")


def make_plan(
    state: GatewayState, ctx: RequestContext, pool: Pool, raw: bytes, body: dict[str, Any], path: str, scope: Scope
) -> Plan:
    plan = Plan(path=path, body=raw, parsed=body, client_headers=scope["headers"], served_default=pool.served_default)
    if ctx.stream and not ctx.include_usage_requested:
        # Meter streams exactly: ask the engine for its usage chunk, hide it from the client.
        plan.body = with_include_usage(raw, body)
        plan.strip_usage = True
    rewrites.apply(plan, pool, ctx, body)
    if state.limiter is not None and ctx.admission is not None:
        plan.extra_headers = encode_headers(state.limiter.headers(ctx.admission)) or None
    return plan


async def _run_until_disconnect(work: Any, receive: Receive, ctx: RequestContext) -> None:
    """Run `work` in this task; if the client disconnects first, cancel it (closing the
    engine connection, so the engine aborts and frees its slot)."""
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
        ctx.error = "client disconnected"
        if ctx.status == 0:
            ctx.status = 499
    finally:
        finished = True
        watcher.cancel()


async def finish(state: GatewayState, ctx: RequestContext) -> None:
    """Record the request everywhere it is counted. Never raises, never blocks for long."""
    b = ctx.backend
    if b is not None and ctx.completed and ctx.upstream_started is not None and ctx.first_byte_at is not None:
        out = ctx.usage.get("completion_tokens", 0) if ctx.usage else 0
        end = ctx.ended or time.monotonic()
        # A non-stream answer's first byte is its last: it says nothing about time to first token.
        ttft = ctx.first_byte_at - ctx.upstream_started if ctx.stream else None
        b.observe(ttft, end - ctx.upstream_started, int(out or 0))
    try:
        if state.meter is not None:
            state.meter.record(ctx)
        if state.metrics is not None:
            state.metrics.observe_request(ctx)
        if state.limiter is not None and ctx.admission is not None:
            await state.limiter.settle(ctx.admission, ctx)
    except Exception:  # metering must never break serving
        log.exception("request %s: recording failed", ctx.request_id)
