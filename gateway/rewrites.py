"""Which rewrites a request's answer gets, chosen once per request from its pool's settings.

Most requests need only the model-name rewrite, a `find` and a slice per event. The
reasoning split, embedding encoding and error normalisation live in `reasoning` and
`compat`; this module only decides which of them apply.
"""

from __future__ import annotations

from typing import Any

import orjson

from .backends import Pool
from .context import RequestContext
from .proxy import Plan

_MODEL_KEYS = (b'"model":"', b'"model": "')


def replace_model(data: bytes, name: bytes) -> bytes:
    """Put `name` (JSON-escaped, no quotes) in the first `"model"` field of a JSON text.

    Inside JSON strings every quote is escaped, so the unescaped `"model":"` pattern only
    matches a real key; engines emit `model` before `choices`, so the first is top-level.
    """
    for marker in _MODEL_KEYS:
        i = data.find(marker)
        if i >= 0:
            j = i + len(marker)
            k = data.find(b'"', j)
            if k < 0 or data[j:k] == name:
                return data
            return data[:j] + name + data[k:]
    return data


def apply(plan: Plan, pool: Pool, ctx: RequestContext, body: dict[str, Any]) -> None:
    name = orjson.dumps(ctx.model_requested)[1:-1]

    def rename_event(ev: bytes) -> bytes | None:
        return replace_model(ev, name)

    def rename_body(data: bytes) -> bytes:
        return replace_model(data, name)

    plan.rewrite_event = rename_event
    plan.rewrite_body = rename_body
