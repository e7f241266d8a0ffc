"""The inference pipeline, top-down, for every route in `server.routes.ROUTES`.

    authenticate -> read body -> resolve model -> admit (rate limits) -> plan -> forward -> finish

Each step is a named function; each failure is a GatewayError that `handle` turns into
an error response (in the route's dialect) while nothing has been sent yet. A client
that disconnects cancels `forward` (`Exchange.run`); so does a shutdown whose drain
period is over, and then a started stream still ends with an error event and
`data: [DONE]`. `finish` runs on every path and hands the request's record to metering,
metrics and the rate limiter.

The pipeline sees the request through `server.exchange.Exchange` only, so it runs
under our own HTTP protocol and under ASGI alike.
"""

from __future__ import annotations

import logging
import time
from typing import Any

import orjson

from ..context import RequestContext
from ..errors import (
    GatewayError,
    invalid_api_key,
    invalid_request,
    model_not_found,
    service_unavailable,
    sse_error_event,
)
from ..keys.auth import Key, bearer
from ..routing.backend import Backend
from ..routing.pool import Pool
from ..server.asgi import encode_headers
from ..server.exchange import ClientDisconnected, Exchange
from ..server.routes import ERROR_BODIES, Route, paths_for
from ..state import GatewayState
from . import audio, multipart, stored
from .forward import forward
from .plan import Form, Plan, make_plan

log = logging.getLogger("gateway.inference")


# A multipart form's fields the pipeline reads (model routing, streaming, the user).
_FORM_FIELDS = ("model", "stream", "user", "stream_include_usage")
_KIND_NAMES = {
    "chat": "a chat/completion model",
    "embedding": "an embedding model",
    "rerank": "a rerank/score model",
    "transcription": "a transcription model",
}


async def handle(state: GatewayState, route: Route, ex: Exchange) -> None:
    ctx = RequestContext(request_id=ex.header(b"x-request-id") or state.request_ids.new(), endpoint=route.endpoint)
    # Rate-limit headers, known once the key is admitted; sent on the answer or the error.
    limit_headers: dict[str, str] = {}
    try:
        if state.draining:
            raise GatewayError(503, "The gateway is shutting down.", "shutting_down", headers={"retry-after": "1"})
        ctx.key = authenticate(state, ex, route)
        raw = await ex.body(state.config.server.max_body_bytes)
        form = parse_form(ex, raw) if route.body == "multipart" else None
        body = form.body if form is not None else parse_body(raw)
        pool = resolve(state, ctx.key, body, route)
        describe(ctx, ex, pool, body, route)
        if form is not None:
            ctx.audio_upload, ctx.audio_seconds = True, form.audio_seconds
            # Transcription streams ask for usage with a form field, not `stream_options`.
            ctx.include_usage_requested = form.body.get("stream_include_usage") is True
        pinned = await pin_follow_up(state, pool, body) if route.stores else None
        if state.limiter is not None:
            ctx.admission = await state.limiter.admit(ctx.key, ctx)
            limit_headers = state.limiter.headers(ctx.admission)
        plan = make_plan(
            ctx, pool, raw, body, route.upstream_path, ex.headers, encode_headers(limit_headers) or None,
            route=route, form=form,
        )
        if route.stores:
            stored.record_ids(plan, ctx, state.affinity)
            plan.pinned = pinned
        assert state.http is not None
        stopped = await ex.run(forward(state.http, pool, ctx, plan, ex, state.config.server.stream_keepalive))
        if stopped == "disconnected" or stopped == "stalled":
            ctx.error = "client disconnected" if stopped == "disconnected" else "client stopped reading"
            if ctx.status == 0:
                ctx.status = 499
        elif stopped == "shutdown":
            await _end_for_shutdown(ctx, ex, route, plan)
    except GatewayError as e:
        ctx.error = ctx.error or e.message
        if ctx.status == 0:
            ctx.status = e.status
            headers = {**e.headers, **limit_headers, "x-request-id": ctx.request_id}
            headers["content-type"] = "application/json"
            await ex.respond(e.status, encode_headers(headers), ERROR_BODIES[route.errors](e))
    except ClientDisconnected:
        ctx.error = "client disconnected before sending the whole request"
        ctx.status = 499
    finally:
        ctx.ended = time.monotonic()
        await finish(state, ctx)


async def _end_for_shutdown(ctx: RequestContext, ex: Exchange, route: Route, plan: Plan) -> None:
    """The drain period is over and this request is still running: end it properly.

    A stream that started gets its dialect's error event (OpenAI's: `code:
    shutting_down`, then `data: [DONE]`), so SDKs raise a clear error instead of reading
    a truncated body; one that had not started gets a 503.
    """
    ctx.error = "cut short: the gateway is shutting down"
    msg = "The gateway is shutting down; this response was cut short."
    if ctx.first_byte_at is not None or ctx.status != 0:  # a status went out (a keep-alive's: no byte yet)
        if ctx.stream:
            openai = route.stream.name == "openai"
            await ex.end(sse_error_event(msg, code="shutting_down") if openai else plan.stream_error(msg, None))
        return  # a whole body was already handed to the transport
    raise GatewayError(503, msg, "shutting_down", headers={"retry-after": "1"})


def authenticate(state: GatewayState, ex: Exchange, route: Route) -> Key:
    secret = bearer(ex.header(b"authorization"))
    if secret is None and route.x_api_key:
        secret = ex.header(b"x-api-key") or None
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


def parse_form(ex: Exchange, raw: bytes) -> Form:
    """A multipart upload's routing fields; the bytes themselves are forwarded unchanged."""
    bound = multipart.boundary(ex.header(b"content-type"))
    parts = multipart.parts(raw, bound)
    fields = multipart.text_fields(raw, parts)
    body: dict[str, Any] = {k: fields[k] for k in _FORM_FIELDS if k in fields}
    for flag in ("stream", "stream_include_usage"):
        if flag in body:
            # Form values are strings; `describe` expects JSON's booleans.
            body[flag] = body[flag].strip().lower() == "true"
    upload = next((p for p in parts if p.name == "file" and p.filename is not None), None)
    # A header read at fixed offsets (no decoding): meters the audio when the engine won't.
    seconds = audio.duration(memoryview(raw)[upload.start : upload.end]) if upload is not None else None
    return Form(parts=parts, body=body, boundary=bound, audio_seconds=seconds)


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


async def pin_follow_up(state: GatewayState, pool: Pool, body: dict[str, Any]) -> Backend | None:
    """The backend holding the response that `previous_response_id` continues, if known."""
    prev = body.get("previous_response_id")
    if not isinstance(prev, str) or not prev:
        return None
    b = await stored.pin(state.affinity, state.pools, pool, prev, "previous_response_id")
    if b is not None and not b.routable:
        raise service_unavailable(
            f"The engine holding response {prev!r} (backend `{b.id}`) is not ready; retry shortly.",
            code="stored_response_unavailable",
        )
    return b


def describe(ctx: RequestContext, ex: Exchange, pool: Pool, body: dict[str, Any], route: Route) -> None:
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
    ctx.user = user if isinstance(user, str) and user else ex.header(b"x-openwebui-user-id")


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
