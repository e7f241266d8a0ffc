"""The admin API (`/admin/*`): a FastAPI app guarded by the admin key.

Routers from each subsystem are mounted here; each reads the runtime state from
`request.app.state.gw` (a `GatewayState`). Client keys get 403, no key 401.
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Depends, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import Response

from ..errors import GatewayError, invalid_request
from ..keys.auth import bearer
from ..state import GatewayState


def gw(request: Request) -> GatewayState:
    state: GatewayState = request.app.state.gw
    return state


async def require_admin(request: Request) -> None:
    state = gw(request)
    secret = bearer(request.headers.get("authorization"))
    if state.keyring.is_admin(secret):
        return
    if secret is None:
        raise GatewayError(401, "The admin API needs the admin key as a Bearer token.", "invalid_api_key")
    raise GatewayError(403, "This key is not the admin key.", "forbidden", type="permission_error")


def _routers() -> list[APIRouter]:
    # Imported here so that the admin app's FastAPI routes load only when first used.
    from ..engines.admin_api import router as engines_router
    from ..keys.admin_api import router as keys_router
    from ..metering.admin_api import router as usage_router

    return [engines_router, usage_router, keys_router]


def build_admin_app(state: GatewayState) -> FastAPI:
    app = FastAPI(title="gateway admin", docs_url=None, redoc_url=None, openapi_url=None)
    app.state.gw = state

    @app.exception_handler(GatewayError)
    async def _gateway_error(_: Request, exc: GatewayError) -> Response:
        return Response(exc.body(), status_code=exc.status, media_type="application/json", headers=exc.headers)

    @app.exception_handler(RequestValidationError)
    async def _validation(_: Request, exc: RequestValidationError) -> Response:
        first: dict[str, Any] = exc.errors()[0] if exc.errors() else {}
        loc = ".".join(str(p) for p in first.get("loc", ()) if p not in ("body", "query"))
        err = invalid_request(f"{loc}: {first.get('msg', 'invalid input')}", param=loc or None)
        return Response(err.body(), status_code=400, media_type="application/json")

    for r in _routers():
        app.include_router(r, prefix="/admin", dependencies=[Depends(require_admin)])
    return app
