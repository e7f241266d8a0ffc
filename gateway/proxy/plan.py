"""Which rewrites a request and its answer get, chosen once per request from its pool.

Most requests need only the model-name rewrite (a `find` and a slice per event) and the
reasoning-field aliasing fast path (a `bytes in` test). The reasoning split, embedding
encoding and error normalisation live in `reasoning` and `compat`; this module only
decides which of them apply.
"""

from __future__ import annotations

from typing import Any

import orjson

from ..context import RequestContext
from ..routing.pool import Pool
from . import engine_errors as compat
from . import reasoning
from .bodyedit import replace_model
from .forward import Plan


def apply(plan: Plan, pool: Pool, ctx: RequestContext, body: dict[str, Any]) -> None:
    """Set the plan's rewrites; may change `plan.body` or raise a 400 for unsupported input."""
    name = orjson.dumps(ctx.model_requested)[1:-1]
    plan.rewrite_error = compat.normalize_error
    if ctx.endpoint == "chat":
        _chat(plan, pool, ctx, body, name)
    elif ctx.endpoint == "embeddings":
        _embeddings(plan, pool, body, name)
    else:
        _renamed(plan, name)


def _renamed(plan: Plan, name: bytes) -> None:
    def rename_event(ev: bytes) -> bytes | None:
        return replace_model(ev, name)

    def rename_body(data: bytes) -> bytes:
        return replace_model(data, name)

    plan.rewrite_event = rename_event
    plan.rewrite_body = rename_body


def _chat(plan: Plan, pool: Pool, ctx: RequestContext, body: dict[str, Any], name: bytes) -> None:
    mode = pool.cfg.reasoning
    if b'"reasoning' in plan.body and reasoning.strip_reasoning_from_request(body):
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
    compat.check_dimensions(body, pool.cfg.supports_dimensions)
    if not pool.cfg.engine_base64 and compat.request_wants_base64(body):
        # The engine only speaks floats: ask for floats, encode base64 here.
        plan.body = compat.force_float_request(plan.body, body)

        def encode_body(data: bytes) -> bytes:
            return replace_model(compat.floats_to_base64(data), name)

        plan.rewrite_body = encode_body
        return
    _renamed(plan, name)
