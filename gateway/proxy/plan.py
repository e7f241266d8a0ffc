"""The plan for one request: what to send, and which rewrites its answer gets.

Chosen once per request from its route and pool (`make_plan`), then followed by
`forward`. Most requests need only the model-name rewrite (a `find` and a slice per
event) and the reasoning-field aliasing fast path (a `bytes in` test). The rewrites
themselves live in `bodyedit` (requests), `reasoning`, `embeddings` and
`engine_errors` (answers); this module only decides which of them apply.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import orjson

from ..context import RequestContext
from ..metering.model_tokenizer import ModelTokenizer
from ..routing.pool import Pool
from ..server.asgi import RawHeaders
from . import bodyedit, dialects, embeddings, multipart, reasoning, sse
from .bodyedit import replace_model
from .engine_errors import normalize_error
from .usage import Usage

if TYPE_CHECKING:
    from ..routing.backend import Backend
    from ..server.routes import Route

# Rewrites applied to each relayed event / non-stream body (model names, reasoning).
EventRewrite = Callable[[bytes], bytes | None]
BodyRewrite = Callable[[bytes], bytes]
ErrorRewrite = Callable[[int, bytes, str | None], tuple[int, bytes]]


@dataclass(eq=False)
class Plan:
    """How to forward this request: what to send and how to treat what comes back."""

    path: str  # e.g. "/chat/completions", appended to the backend's base URL
    body: bytes
    parsed: dict[str, Any]  # the client's body, parsed (read-only)
    client_headers: RawHeaders
    # The model name engines of this pool serve, when a backend has not told us its own.
    served_default: str
    # We injected include_usage (and maybe continuous_usage_stats): the client must see
    # neither the usage chunk nor `usage` on content chunks (llama.cpp puts it on its last
    # completions chunk; continuous stats put it on every chunk).
    strip_usage: bool = False
    rewrite_event: EventRewrite | None = None
    rewrite_body: BodyRewrite | None = None
    rewrite_error: ErrorRewrite | None = None
    before_done: Callable[[], bytes] | None = None  # events to flush before `data: [DONE]`
    extra_headers: RawHeaders | None = None  # e.g. rate-limit headers for the client
    # Set when the engine's non-stream usage counts one choice of n (llama.cpp): the
    # tokenizer to correct it with (proxy.n_usage).
    recount_choices: ModelTokenizer | None = None
    # Where the route's answers carry usage (`proxy.usage`), and how its streams end.
    body_usage: Callable[[bytes], Usage | None] = sse.body_usage
    event_usage: Callable[[bytes], Usage | None] = sse.event_usage
    stream_ends: Callable[[bytes], bool] | None = None  # None: `data: [DONE]`
    stream_error: Callable[[str, bytes | None], bytes] = dialects.OPENAI.error_event
    upstream_root: bool = False  # `path` is from the engine's root URL, not its /v1 base
    content_type: str = "application/json"
    # The body for an engine serving `model` under this name; None: the JSON `model` edit.
    retarget: Callable[[str], bytes] | None = None
    # The one backend that may serve this request (it holds the stored response it names).
    pinned: Backend | None = None


@dataclass(frozen=True, slots=True)
class Form:
    """A multipart upload: its parts (for the model edit) and the fields routing reads."""

    parts: list[multipart.Part]
    body: dict[str, Any]
    boundary: bytes = b""
    audio_seconds: float | None = None  # the `file` part's duration, from its header


def make_plan(
    ctx: RequestContext,
    pool: Pool,
    raw: bytes,
    body: dict[str, Any],
    upstream_path: str,
    client_headers: RawHeaders,
    extra_headers: RawHeaders | None = None,
    *,
    route: Route | None = None,
    form: Form | None = None,
) -> Plan:
    """The plan for this request; may raise a 400 for input the pool cannot serve."""
    plan = Plan(
        path=upstream_path, body=raw, parsed=body, client_headers=client_headers,
        served_default=pool.served_default, extra_headers=extra_headers,
    )  # fmt: skip
    inject_usage = True
    if route is not None:
        plan.body_usage, plan.event_usage = route.usage.body, route.usage.event
        plan.stream_ends, plan.stream_error = route.stream.ends, route.stream.error_event
        plan.upstream_root = route.upstream_root
        inject_usage = route.stream.inject_usage
    if form is not None:
        _form(plan, ctx, form, client_headers)
    if ctx.stream and inject_usage and not ctx.include_usage_requested:
        # Meter streams exactly: ask the engine for its usage chunk, hide it from the client.
        plan.body = bodyedit.with_include_usage(raw, body, pool.cfg.asks_continuous_usage)
        plan.strip_usage = True
    n = body.get("n")
    if not ctx.stream and isinstance(n, int) and n > 1 and pool.cfg.usage_counts_one_choice:
        plan.recount_choices = pool.tokenizer
    name = orjson.dumps(ctx.model_requested)[1:-1]
    plan.rewrite_error = normalize_error
    if ctx.endpoint == "chat":
        _chat(plan, pool, ctx, body, name)
    elif ctx.endpoint == "embeddings":
        _embeddings(plan, pool, body, name)
    else:
        _renamed(plan, name)
    return plan


def _form(plan: Plan, ctx: RequestContext, form: Form, client_headers: RawHeaders) -> None:
    # The upload goes out as it came: its own content-type (boundary) and bytes, with
    # only the `model` field's value changed when the engine serves another name.
    plan.content_type = next((v.decode("latin-1") for k, v in client_headers if k == b"content-type"), "")
    raw, requested, parts = plan.body, form.body.get("model"), form.parts
    if ctx.stream and not ctx.include_usage_requested and form.parts:
        # Meter the stream exactly: vLLM's form field for stream usage (set, or added after
        # the file, whose bytes do not move), and its usage chunk hidden from the client.
        flag = "stream_include_usage"
        if flag in form.body:  # the client sent `false`: the parts after it move, find them again
            raw = multipart.with_field(raw, form.parts, flag, "true")
            parts = multipart.parts(raw, form.boundary)
        else:
            raw = multipart.with_added_field(raw, form.parts, form.boundary, flag, "true")
        plan.body = raw
        plan.strip_usage = True

    def retarget(served: str) -> bytes:
        return raw if served == requested else multipart.with_field(raw, parts, "model", served)

    plan.retarget = retarget


def _renamed(plan: Plan, name: bytes) -> None:
    def rename_event(ev: bytes) -> bytes | None:
        return replace_model(ev, name)

    def rename_body(data: bytes) -> bytes:
        return replace_model(data, name)

    plan.rewrite_event = rename_event
    plan.rewrite_body = rename_body


def _chat(plan: Plan, pool: Pool, ctx: RequestContext, body: dict[str, Any], name: bytes) -> None:
    mode = pool.cfg.reasoning
    if b'"reasoning' in plan.body and bodyedit.strip_reasoning_from_request(body):
        # Clients echo earlier answers' reasoning back; engines may reject the field.
        plan.body = orjson.dumps(body)
    n = body.get("n")
    splitter = (
        reasoning.StreamSplitter(mode, n if isinstance(n, int) and n > 0 else 1)
        if ctx.stream and mode in reasoning.SPLIT_MODES
        else None
    )

    def chat_event(ev: bytes) -> bytes | None:
        out = reasoning.rewrite_chat_event(ev, splitter, mode)
        return None if out is None else replace_model(out, name)

    def chat_body(data: bytes) -> bytes:
        return replace_model(reasoning.rewrite_chat_body(data, mode), name)

    plan.rewrite_event = chat_event
    plan.rewrite_body = chat_body
    if splitter is not None:

        def drain() -> bytes:
            return replace_model(reasoning.drain_chat_events(splitter), name)

        plan.before_done = drain


def _embeddings(plan: Plan, pool: Pool, body: dict[str, Any], name: bytes) -> None:
    embeddings.check_dimensions(body, pool.cfg.supports_dimensions)
    if not pool.cfg.engine_base64 and bodyedit.request_wants_base64(body):
        # The engine only speaks floats: ask for floats, encode base64 here.
        plan.body = bodyedit.force_float_request(plan.body, body)

        def encode_body(data: bytes) -> bytes:
            return replace_model(embeddings.floats_to_base64(data), name)

        plan.rewrite_body = encode_body
        return
    _renamed(plan, name)
