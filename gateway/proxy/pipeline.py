"""The inference pipeline, top-down, for every route in `server.routes.ROUTES`.

    authenticate -> read body -> resolve model -> admit (rate limits) -> plan -> forward -> finish

Each step is a named function; each failure is a GatewayError that `handle` turns into
an error response (in the route's dialect) while nothing has been sent yet. A client
that disconnects cancels `forward` (`server.asgi.run_until_disconnect`). `finish` runs on
every path and hands the request's record to metering, metrics and the rate limiter.
"""

from __future__ import annotations

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
    run_until_disconnect,
    send_response,
)
from ..server.routes import ERROR_BODIES, Route, paths_for
from ..state import GatewayState
from . import multipart
from .forward import forward
from .plan import Form, make_plan

log = logging.getLogger("gateway.inference")


# A multipart form's fields the pipeline reads (model routing, streaming, the user).
_FORM_FIELDS = ("model", "stream", "user")
_KIND_NAMES = {
    "chat": "a chat/completion model",
    "embedding": "an embedding model",
    "rerank": "a rerank/score model",
    "transcription": "a transcription model",
}


def new_request_id() -> str:
    return "req-" + os.urandom(12).hex()


async def handle(state: GatewayState, route: Route, scope: Scope, receive: Receive, send: Send) -> None:
    ctx = RequestContext(request_id=header(scope, b"x-request-id") or new_request_id(), endpoint=route.endpoint)
    # Rate-limit headers, known once the key is admitted; sent on the answer or the error.
    limit_headers: dict[str, str] = {}
    try:
        if state.draining:
            raise GatewayError(503, "The gateway is shutting down.", "shutting_down", headers={"retry-after": "1"})
        ctx.key = authenticate(state, scope, route)
        raw = await read_body(scope, receive, state.config.server.max_body_bytes)
        form = parse_form(scope, raw) if route.body == "multipart" else None
        body = form.body if form is not None else parse_body(raw)
        pool = resolve(state, ctx.key, body, route)
        describe(ctx, scope, pool, body, route)
        if state.limiter is not None:
            ctx.admission = await state.limiter.admit(ctx.key, ctx)
            limit_headers = state.limiter.headers(ctx.admission)
        plan = make_plan(
            ctx, pool, raw, body, route.upstream_path, scope["headers"], encode_headers(limit_headers) or None,
            route=route, form=form,
        )
        assert state.http is not None
        if await run_until_disconnect(forward(state.http, pool, ctx, plan, send), receive):
            ctx.error = "client disconnected"
            if ctx.status == 0:
                ctx.status = 499
    except GatewayError as e:
        ctx.error = ctx.error or e.message
        if ctx.status == 0:
            ctx.status = e.status
            headers = {**e.headers, **limit_headers, "x-request-id": ctx.request_id}
            await send_response(send, e.status, ERROR_BODIES[route.errors](e), encode_headers(headers))
    except ClientDisconnected:
        ctx.error = "client disconnected before sending the whole request"
        ctx.status = 499
    finally:
        ctx.ended = time.monotonic()
        await finish(state, ctx)


def authenticate(state: GatewayState, scope: Scope, route: Route) -> Key:
    secret = bearer(header(scope, b"authorization"))
    if secret is None and route.x_api_key:
        secret = header(scope, b"x-api-key") or None
    key = state.keyring.lookup(secret)
    if key is None:
        if secret is not None:
            raise invalid_api_key("Invalid API key provided.")
        how = "`x-api-key: <key>` or `Authorization: Bearer <key>`" if route.x_api_key else "`Authorization: Bearer <key>`"
        raise invalid_api_key(f"Missing API key: send {how}.")
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


def parse_form(scope: Scope, raw: bytes) -> Form:
    """A multipart upload's routing fields; the bytes themselves are forwarded unchanged."""
    bound = multipart.boundary(header(scope, b"content-type"))
    parts = multipart.parts(raw, bound)
    fields = multipart.text_fields(raw, parts)
    body: dict[str, Any] = {k: fields[k] for k in _FORM_FIELDS if k in fields}
    if "stream" in body:
        # Form values are strings; `describe` expects JSON's boolean.
        body["stream"] = body["stream"].strip().lower() == "true"
    return Form(parts=parts, body=body)


def resolve(state: GatewayState, key: Key, body: dict[str, Any], route: Route) -> Pool:
    """The pool serving the body's `model`, if this key may use it on this route."""
    model = body.get("model")
    if model is None:
        raise invalid_request("You must provide a model parameter.", param="model", code="missing_model")
    if not isinstance(model, str):
        raise invalid_request("`model` must be a string.", param="model", code="invalid_type")
    pool = state.resolve(model)
    # A model outside the key's allowlist is indistinguishable from one that does not exist.
    if pool is None or not key.allows(pool.name):
        raise model_not_found(model)
    kind = pool.cfg.kind
    if kind not in route.kinds:
        what = _KIND_NAMES.get(kind, f"a {kind} model")
        raise invalid_request(
            f"`{model}` is {what}; use {' or '.join(paths_for(kind))}.",
            param="model",
            code="model_not_supported_on_endpoint",
        )
    return pool


def describe(ctx: RequestContext, scope: Scope, pool: Pool, body: dict[str, Any], route: Route) -> None:
    stream = body.get("stream", False)
    if stream is not None and not isinstance(stream, bool):
        raise invalid_request("`stream` must be a boolean.", param="stream", code="invalid_type")
    ctx.pool = pool
    ctx.model_requested = body["model"]
    ctx.body = body
    ctx.stream = bool(stream) and route.streams
    ctx.usage_needs_end = ctx.stream and route.usage.partial_until_end
    opts = body.get("stream_options")
    ctx.include_usage_requested = isinstance(opts, dict) and opts.get("include_usage") is True
    user = body.get("user")
    ctx.user = user if isinstance(user, str) and user else header(scope, b"x-openwebui-user-id")


async def finish(state: GatewayState, ctx: RequestContext) -> None:
    """Record the request everywhere it is counted. Never raises, never blocks for long."""
    try:
        if state.meter is not None:
            state.meter.record(ctx)
        if state.metrics is not None:
            state.metrics.observe_request(ctx)
        if state.limiter is not None and ctx.admission is not None:
            await state.limiter.settle(ctx.admission, ctx)
    except Exception:  # metering must never break serving
        log.exception("request %s: recording failed", ctx.request_id)
