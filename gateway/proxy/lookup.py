"""Routes that name a stored object instead of a model: `GET /v1/responses/{id}` and
`POST /v1/responses/{id}/cancel`.

vLLM keeps stored responses in the memory of the one engine process that produced them
(only with `VLLM_ENABLE_RESPONSES_API_STORE=1`), and the id does not say which. When the
gateway saw the response pass (`proxy/stored.py`), it asks that one backend; otherwise it
asks the backends of the pools the key may use, one after another, and relays the first
answer that is not a 404. These requests run no model: they cost no tokens,
take no batch slot and are recorded as requests of their route's endpoint.
"""

from __future__ import annotations

import re
import time

import aiohttp

from ..context import RequestContext
from ..errors import GatewayError, service_unavailable
from ..routing.affinity import Holder
from ..routing.backend import Backend
from ..routing.pool import Pool
from ..server.asgi import encode_headers
from ..server.exchange import Exchange
from ..server.routes import ERROR_BODIES, Route
from ..state import GatewayState
from . import stored
from .bodyedit import replace_model
from .engine_errors import normalize_error
from .headers import request_headers
from .pipeline import authenticate, finish

_ID = re.compile(r"^[A-Za-z0-9_\-]{1,200}$")
_MAX_BODY = 64 * 1024  # a cancel carries no body; anything big is not for us


def object_id(route: Route, path: str) -> str:
    """The id in `path` for a route declared as `/prefix/{id}[/suffix]`."""
    prefix, _, suffix = route.path.partition("{id}")
    oid = path[len(prefix) : len(path) - len(suffix)] if suffix else path[len(prefix) :]
    if not _ID.match(oid):
        raise GatewayError(400, f"Invalid id {oid!r}.", "invalid_request", "response_id")
    return oid


async def handle(state: GatewayState, route: Route, ex: Exchange) -> None:
    ctx = RequestContext(request_id=ex.header(b"x-request-id") or state.request_ids.new(), endpoint=route.endpoint)
    try:
        ctx.key = authenticate(state, ex, route)
        await ex.body(_MAX_BODY)
        oid = object_id(route, ex.path)
        status, body, ctype = await _ask_backends(state, ctx, route, oid)
        ctx.status = status
        ctx.usage = {"prompt_tokens": 0, "completion_tokens": 0, "total_tokens": 0}
        ctx.completed = True
        headers = encode_headers({"content-type": ctype, "x-request-id": ctx.request_id})
        await ex.respond(status, headers, body)
        ctx.first_byte_at = time.monotonic()
    except GatewayError as e:
        ctx.error = e.message
        ctx.status = e.status
        headers = encode_headers({**e.headers, "content-type": "application/json", "x-request-id": ctx.request_id})
        await ex.respond(e.status, headers, ERROR_BODIES[route.errors](e))
    finally:
        ctx.ended = time.monotonic()
        await finish(state, ctx)


async def _ask_backends(
    state: GatewayState, ctx: RequestContext, route: Route, oid: str
) -> tuple[int, bytes, str]:
    assert ctx.key is not None
    holder = await state.affinity.lookup(oid) if route.stores else None
    if holder is not None:
        return await _ask_holder(state, ctx, route, oid, holder)
    unreachable = 0
    for pool in state.pools.values():
        if pool.cfg.kind not in route.kinds or not ctx.key.allows(pool.name):
            continue
        for backend in pool.backends:
            if not backend.routable:
                continue
            answer = await _ask(state, ctx, route, pool, backend, oid)
            if answer is None:
                unreachable += 1
                continue
            if answer[0] == 404:
                continue
            return _relay(ctx, pool, backend, answer)
    if unreachable:
        raise GatewayError(
            502,
            f"Response {oid!r} not found; {unreachable} backend(s) could not be asked.",
            "upstream_unreachable",
        )
    raise _not_found(oid)


async def _ask_holder(
    state: GatewayState, ctx: RequestContext, route: Route, oid: str, holder: Holder
) -> tuple[int, bytes, str]:
    """Ask only the backend that stored `oid` (its answer is final, a 404 included)."""
    assert ctx.key is not None
    pool = state.pools.get(holder.pool)
    if pool is not None and not ctx.key.allows(pool.name):
        raise _not_found(oid)  # another key's pool: as if it did not exist
    backend = pool.get(holder.backend) if pool is not None else None
    if pool is None or backend is None or backend.restarts != holder.restarts:
        raise stored.gone(oid, holder, "response_id")
    if not backend.routable:
        raise service_unavailable(
            f"The engine holding response {oid!r} (backend `{backend.id}`) is not ready; retry shortly.",
            code="stored_response_unavailable",
        )
    answer = await _ask(state, ctx, route, pool, backend, oid)
    if answer is None:
        raise GatewayError(502, f"Backend {backend.id} holding response {oid!r} is unreachable.",
                           "upstream_unreachable")
    return _relay(ctx, pool, backend, answer)


async def _ask(
    state: GatewayState, ctx: RequestContext, route: Route, pool: Pool, backend: Backend, oid: str
) -> tuple[int, bytes, str] | None:
    """(status, body, content-type) of one backend's answer; None when it cannot be reached."""
    assert state.http is not None
    t = pool.cfg.timeouts
    timeout = aiohttp.ClientTimeout(total=None, sock_connect=t.connect, sock_read=t.first_byte)
    suffix = route.path.partition("{id}")[2]
    url = f"{backend.url}{route.upstream_path}/{oid}{suffix}"
    headers = request_headers([], ctx.request_id, backend.api_key)
    try:
        # The shared client (aiohttp or the raw one) offers `get` and `post`.
        call = state.http.get if route.method == "GET" else state.http.post
        async with call(url, headers=headers, timeout=timeout) as resp:
            return resp.status, await resp.read(), resp.headers.get("content-type", "application/json")
    except (aiohttp.ClientError, TimeoutError):
        return None


def _relay(ctx: RequestContext, pool: Pool, backend: Backend, answer: tuple[int, bytes, str]) -> tuple[int, bytes, str]:
    status, body, ctype = answer
    ctx.pool, ctx.backend, ctx.model_requested = pool, backend, pool.name
    if status >= 400:
        status, body = normalize_error(status, body, ctype)
        raise GatewayError(status, f"backend answered {status}", "upstream_error", raw_body=body)
    return status, replace_model(body, pool.name.encode()), ctype


def _not_found(oid: str) -> GatewayError:
    return GatewayError(404, f"Response with id '{oid}' not found.", "not_found", "response_id")
