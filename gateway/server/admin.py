"""The admin API (`/admin/*`): a FastAPI app guarded by the admin key.

Routers from each subsystem are mounted here; each reads the runtime state from
`request.app.state.gw` (a `GatewayState`).

The key is checked before routing, so a caller without the admin key gets the same
answer on every `/admin*` path and method (no key or an unknown one 401, a client key
403) and learns nothing about which paths exist (issue #14). With the admin key, unknown
paths are 404 and wrong methods 405, OpenAI-shaped like every other error.
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Depends, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import Response
from starlette.exceptions import HTTPException

from ..errors import GatewayError, invalid_request
from ..keys.auth import bearer
from ..state import GatewayState
from .asgi import Receive, Scope, Send, header, send_response


def gw(request: Request) -> GatewayState:
    state: GatewayState = request.app.state.gw
    return state


def admin_refusal(state: GatewayState, authorization: str | None) -> GatewayError | None:
    """None for the admin key; otherwise the error, which depends on the key alone."""
    secret = bearer(authorization)
    if state.keyring.is_admin(secret):
        return None
    if secret is not None and state.keyring.mode != "none" and state.keyring.lookup(secret) is not None:
        return GatewayError(403, "This key is not the admin key.", "forbidden", type="permission_error")
    return GatewayError(401, "The admin API needs the admin key as a Bearer token.", "invalid_api_key")


async def require_admin(request: Request) -> None:
    # Kept on the routers as well: the ASGI guard below runs first, this one guards any
    # other mounting of the routers.
    err = admin_refusal(gw(request), request.headers.get("authorization"))
    if err is not None:
        raise err


class AdminGuard:
    """Checks the admin key before FastAPI routes, so 404/405 are only told to the admin."""

    def __init__(self, state: GatewayState, app: FastAPI) -> None:
        self.state = state
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        err = admin_refusal(self.state, header(scope, b"authorization"))
        if err is not None:
            return await send_response(send, err.status, err.body())
        await self.app(scope, receive, send)


def _routers() -> list[APIRouter]:
    # Imported here so that the admin app's FastAPI routes load only when first used.
    from ..engines.admin_api import router as engines_router
    from ..keys.admin_api import router as keys_router
    from ..metering.admin_api import router as usage_router

    return [engines_router, usage_router, keys_router]


def build_admin_app(state: GatewayState) -> AdminGuard:
    app = FastAPI(title="gateway admin", docs_url=None, redoc_url=None, openapi_url=None)
    app.state.gw = state

    @app.exception_handler(GatewayError)
    async def _gateway_error(_: Request, exc: GatewayError) -> Response:
        return Response(
            exc.body(), status_code=exc.status, media_type="application/json", headers=exc.headers
        )

    @app.exception_handler(HTTPException)
    async def _http_error(_: Request, exc: HTTPException) -> Response:
        # Starlette's own 404/405 (and any HTTPException a router raises): OpenAI-shaped.
        code = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code, "invalid_request")
        message = {404: "Unknown admin path.", 405: "Method not allowed on this admin path."}.get(
            exc.status_code, str(exc.detail)
        )
        err = GatewayError(exc.status_code, message, code, headers=dict(exc.headers or {}))
        return Response(
            err.body(), status_code=err.status, media_type="application/json", headers=err.headers
        )

    @app.exception_handler(RequestValidationError)
    async def _validation(_: Request, exc: RequestValidationError) -> Response:
        first: dict[str, Any] = exc.errors()[0] if exc.errors() else {}
        loc = ".".join(str(p) for p in first.get("loc", ()) if p not in ("body", "query"))
        err = invalid_request(f"{loc}: {first.get('msg', 'invalid input')}", param=loc or None)
        return Response(err.body(), status_code=400, media_type="application/json")

    for r in _routers():
        app.include_router(r, prefix="/admin", dependencies=[Depends(require_admin)])
    return AdminGuard(state, app)
