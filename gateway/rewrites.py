"""Which rewrites a request's answer gets, chosen once per request from its pool's settings.

Most requests need only the model-name rewrite, a `find` and a slice per event. The
reasoning split, embedding encoding and error normalisation live in `reasoning` and
`compat`; this module only decides which of them apply.
"""

from __future__ import annotations

from typing import Any

import orjson

from .backends import Pool
from .bodyedit import replace_model
from .context import RequestContext
from .proxy import Plan


def apply(plan: Plan, pool: Pool, ctx: RequestContext, body: dict[str, Any]) -> None:
    name = orjson.dumps(ctx.model_requested)[1:-1]

    def rename_event(ev: bytes) -> bytes | None:
        return replace_model(ev, name)

    def rename_body(data: bytes) -> bytes:
        return replace_model(data, name)

    plan.rewrite_event = rename_event
    plan.rewrite_body = rename_body
