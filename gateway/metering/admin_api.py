"""Admin endpoints for usage and keys (mounted under /admin with admin-key auth).

- GET    /usage?group_by=key|pool|user|model|hour|day&since=24h&until=...&format=json|csv
- POST   /keys                 {name, models, rpm, tpm, max_concurrent, budget, expires} -> secret, once
- GET    /keys                 config and dynamic keys: no secrets, no digests
- DELETE /keys/{name}          revoke
- POST   /keys/{name}/rotate   a new secret for the key, once
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Query, Request
from fastapi.responses import Response
from pydantic import BaseModel, ConfigDict, Field, field_validator

from gateway.errors import GatewayError, invalid_request
from gateway.state import GatewayState

from .query import GROUPS, parse_time, to_csv

router = APIRouter()


def _gw(request: Request) -> GatewayState:
    state: GatewayState = request.app.state.gw
    return state


def _keystore(request: Request) -> Any:
    ks = _gw(request).keystore
    if ks is None:
        raise GatewayError(503, "The key store is not running on this gateway.", "keystore_unavailable")
    return ks


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


class NewKey(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str = Field(min_length=1, max_length=64)
    models: list[str] | None = None
    rpm: int | None = Field(None, ge=1)
    tpm: int | None = Field(None, ge=1)
    max_concurrent: int | None = Field(None, ge=1)
    budget: str | None = None
    expires: str | float | None = None

    @field_validator("models", mode="before")
    @classmethod
    def _split(cls, v: Any) -> Any:
        # The CLI and curl users write `qwen*,llama*`; a JSON list works too.
        if isinstance(v, str):
            return [p.strip() for p in v.split(",") if p.strip()]
        return v


@router.post("/keys")
async def create_key(request: Request, body: NewKey) -> Response:
    info, secret = await _keystore(request).create(
        body.name, body.models, body.rpm, body.tpm, body.max_concurrent, body.budget, body.expires
    )
    return _json({**info, "key": secret}, 201)


@router.get("/keys")
async def list_keys(request: Request) -> Response:
    return _json({"object": "list", "data": _keystore(request).list()})


@router.delete("/keys/{name}")
async def revoke_key(request: Request, name: str) -> Response:
    return _json(await _keystore(request).revoke(name))


@router.post("/keys/{name}/rotate")
async def rotate_key(request: Request, name: str) -> Response:
    info, secret = await _keystore(request).rotate(name)
    return _json({**info, "key": secret})


def _json(obj: Any, status: int = 200) -> Response:
    import orjson

    # Secrets appear in these bodies: no cache may keep them.
    return Response(
        orjson.dumps(obj),
        status_code=status,
        media_type="application/json",
        headers={"cache-control": "no-store"},
    )
