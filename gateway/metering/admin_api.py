"""Admin endpoint for usage (mounted under /admin with admin-key auth).

- GET    /usage?group_by=key|pool|user|model|hour|day&since=24h&until=...&format=json|csv
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Query, Request
from fastapi.responses import Response

from gateway.errors import GatewayError, invalid_request
from gateway.state import GatewayState

from .query import GROUPS, parse_time, to_csv

router = APIRouter()


def _gw(request: Request) -> GatewayState:
    state: GatewayState = request.app.state.gw
    return state


@router.get("/usage")
async def usage(
    request: Request,
    group_by: str = Query("key"),
    since: str | None = Query("24h"),
    until: str | None = Query(None),
    format: str = Query("json"),
) -> Response:
    meter = _gw(request).meter
    if meter is None:
        raise GatewayError(503, "Usage metering is disabled on this gateway.", "metering_disabled")
    if group_by not in GROUPS:
        raise invalid_request(f"group_by must be one of {', '.join(GROUPS)}", "group_by")
    if format not in ("json", "csv"):
        raise invalid_request("format must be json or csv", "format")
    try:
        t0, t1 = parse_time(since), parse_time(until)
    except ValueError as e:
        raise invalid_request(str(e), "since") from None
    rows = await meter.query(group_by, t0, t1)
    if format == "csv":
        return Response(to_csv(rows, group_by), media_type="text/csv; charset=utf-8")
    return _json({"object": "list", "group_by": group_by, "since": t0, "until": t1, "data": rows})


def _json(obj: Any, status: int = 200) -> Response:
    import orjson

    # Per-key figures: no shared cache may keep them.
    return Response(
        orjson.dumps(obj),
        status_code=status,
        media_type="application/json",
        headers={"cache-control": "no-store"},
    )
