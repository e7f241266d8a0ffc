"""Responses the engine stores: record which backend produced each, pin what refers to it.

Runs only on routes declared `stores=True` (`/v1/responses`). Recording reads the id off
the non-stream body, or off the stream's first event (`response.created`) as it is relayed:
one `startswith` per event and a bounded regex on that one event, nothing buffered.
Pinning turns `previous_response_id` (or a GET/cancel id) into the one backend that can
serve it, or a clear error when that backend is gone.
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING

from ..errors import GatewayError
from ..routing.affinity import Holder, ResponseAffinity

if TYPE_CHECKING:
    from ..context import RequestContext
    from ..routing.backend import Backend
    from ..routing.pool import Pool
    from .plan import Plan

# vLLM writes `"id":"resp_<hex>"` first in a response object; the window keeps a
# pathological body from costing more than a short scan.
_ID = re.compile(rb'"id"\s*:\s*"(resp_[A-Za-z0-9_\-]{1,200})"')
_WINDOW = 512
_CREATED = b"event: response.created"


def response_id(data: bytes) -> str | None:
    """The id of the response object at the start of `data` (a body, or a created event)."""
    m = _ID.search(data, 0, _WINDOW)
    return m.group(1).decode() if m else None


def record_ids(plan: Plan, ctx: RequestContext, affinity: ResponseAffinity) -> None:
    """Wrap the plan's rewrites so each answer's response id is recorded with its backend."""
    rewrite_body, rewrite_event = plan.rewrite_body, plan.rewrite_event

    def remember(data: bytes) -> None:
        oid = response_id(data)
        if oid is not None and ctx.backend is not None:
            affinity.record(oid, ctx.backend)

    def body(data: bytes) -> bytes:
        remember(data)
        return rewrite_body(data) if rewrite_body is not None else data

    def event(ev: bytes) -> bytes | None:
        if ev.startswith(_CREATED):
            remember(ev)
        return rewrite_event(ev) if rewrite_event is not None else ev

    plan.rewrite_body, plan.rewrite_event = body, event


def holder_backend(pools: dict[str, Pool], holder: Holder, pool: Pool) -> Backend | None:
    """The backend of `pool` that holds the object: the recorded one, or one of `pool`'s
    backends at the same URL (two pools may share an engine)."""
    b = pool.get(holder.backend)
    if b is not None:
        return b if b.restarts == holder.restarts else None
    origin = pools.get(holder.pool)
    recorded = origin.get(holder.backend) if origin is not None else None
    if recorded is None or not recorded.url or recorded.restarts != holder.restarts:
        return None
    return next((x for x in pool.backends if x.url == recorded.url), None)


async def pin(
    affinity: ResponseAffinity, pools: dict[str, Pool], pool: Pool, oid: str, param: str
) -> Backend | None:
    """The backend a request naming `oid` must go to; None when the id is unknown here (the
    engine then says whether it knows it). Raises when the holder is gone or elsewhere."""
    holder = await affinity.lookup(oid)
    if holder is None:
        return None
    b = holder_backend(pools, holder, pool)
    if b is not None:
        return b
    origin = pools.get(holder.pool)
    recorded = origin.get(holder.backend) if origin is not None else None
    if recorded is not None and recorded.restarts == holder.restarts and origin is not pool:
        raise GatewayError(
            400,
            f"Response {oid!r} was stored by an engine of model `{holder.pool}`, which does not serve "
            f"`{pool.name}`; continue it with model `{holder.pool}`.",
            "stored_on_other_model",
            param,
        )
    raise gone(oid, holder, param)


def gone(oid: str, holder: Holder, param: str) -> GatewayError:
    return GatewayError(
        404,
        f"Response {oid!r} was stored by backend `{holder.backend}`, which is gone or has restarted since; "
        "stored responses live in that engine's memory and are lost with it. Send the whole "
        "conversation as `input` instead.",
        "stored_response_lost",
        param,
    )
