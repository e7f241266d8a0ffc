"""Admin endpoints for engines (mounted under /admin with admin-key auth by gateway.server.admin).

- GET  /backends                       every backend, spawned and external, with its state
- GET  /backends/{id}/logs?lines=N      the last N lines of a spawned engine's output
- POST /reload                         reload the config file; 400 with the reason if invalid

Backend ids contain `/` and `@` (`chat/vllm-0`, `chat@http://host:8000/v1`), hence `:path`.
"""

from __future__ import annotations

import time
from typing import Any

from fastapi import APIRouter, Query, Request

from ..config import ConfigError
from ..errors import GatewayError
from ..routing.backend import BackendState
from ..state import GatewayState
from .endpoints import status_row

router = APIRouter()


def _gw(request: Request) -> GatewayState:
    state: GatewayState = request.app.state.gw
    return state


def _endpoint_rows(state: GatewayState) -> list[dict[str, Any]]:
    """Rows when no supervisor runs (a gateway with external endpoints only)."""
    return [
        status_row(b, None)
        for pool in state.pools.values()
        for b in pool.backends
    ]


@router.get("/backends")
async def list_backends(request: Request) -> dict[str, Any]:
    state = _gw(request)
    rows = state.supervisor.status() if state.supervisor is not None else _endpoint_rows(state)
    ready = sum(1 for r in rows if r["state"] == BackendState.READY)
    return {"object": "list", "data": rows, "ready": ready, "total": len(rows), "time": time.time()}


@router.get("/backends/{backend_id:path}/logs")
async def backend_logs(
    request: Request, backend_id: str, lines: int = Query(200, ge=1, le=10000)
) -> dict[str, Any]:
    state = _gw(request)
    out = state.supervisor.logs(backend_id, lines) if state.supervisor is not None else None
    if out is None:
        raise GatewayError(
            404,
            f"No spawned engine `{backend_id}` (external endpoints have no logs here).",
            "backend_not_found",
        )
    return {"id": backend_id, "lines": out}


@router.post("/reload")
async def reload_config(request: Request) -> dict[str, Any]:
    from ..reload import reload

    state = _gw(request)
    try:
        summary = await reload(state)
    except ConfigError as e:
        raise GatewayError(
            400, f"Config rejected; still serving the previous one.\n{e}", "invalid_config"
        ) from None
    return {"status": "reloaded", **summary}
