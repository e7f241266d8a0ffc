"""Admin endpoints for keys (mounted under /admin with admin-key auth).

- POST   /keys                 {name, models, rpm, tpm, max_concurrent, budget, expires} -> secret, once
- GET    /keys                 config and dynamic keys: no secrets, no digests
- DELETE /keys/{name}          revoke
- POST   /keys/{name}/rotate   a new secret for the key, once
"""

from __future__ import annotations

from typing import Any

import orjson
from fastapi import APIRouter, Request
from fastapi.responses import Response
from pydantic import BaseModel, ConfigDict, Field, field_validator

from ..errors import GatewayError
from ..state import GatewayState
from .admin import KeyAdmin

router = APIRouter()


def _admin(request: Request) -> KeyAdmin:
    state: GatewayState = request.app.state.gw
    if state.key_sync is None:
        raise GatewayError(503, "The key store is not running on this gateway.", "keystore_unavailable")
    return KeyAdmin(state.key_sync)


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
    info, secret = await _admin(request).create(
        body.name, body.models, body.rpm, body.tpm, body.max_concurrent, body.budget, body.expires
    )
    return _json({**info, "key": secret}, 201)


@router.get("/keys")
async def list_keys(request: Request) -> Response:
    return _json({"object": "list", "data": _admin(request).list()})


@router.delete("/keys/{name}")
async def revoke_key(request: Request, name: str) -> Response:
    return _json(await _admin(request).revoke(name))


@router.post("/keys/{name}/rotate")
async def rotate_key(request: Request, name: str) -> Response:
    info, secret = await _admin(request).rotate(name)
    return _json({**info, "key": secret})


def _json(obj: Any, status: int = 200) -> Response:
    # Secrets appear in these bodies: no cache may keep them.
    return Response(
        orjson.dumps(obj),
        status_code=status,
        media_type="application/json",
        headers={"cache-control": "no-store"},
    )
