"""What an external engine serves: its model name and context length, from `GET /v1/models`.

Engines reject requests for names they do not serve (vLLM answers 404), so the gateway
must send each backend the name *it* serves, whatever alias the client used. Spawned
engines' names come from their config; external ones are asked here, in the background,
so the gateway never waits on an engine to list its own models (the supervisor's
endpoint probe runs it beside the health checks).
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import aiohttp

from ..routing.backend import Backend

log = logging.getLogger("gateway.discovery")


async def discover(session: aiohttp.ClientSession, backend: Backend, wait: float = 5.0) -> bool:
    """Fill `backend.served_model` (and `max_model_len`) from the engine's model list."""
    headers = {"authorization": f"Bearer {backend.api_key}"} if backend.api_key else {}
    try:
        async with session.get(backend.url + "/models", headers=headers,
                               timeout=aiohttp.ClientTimeout(total=wait)) as r:
            if r.status != 200:
                return False
            data: Any = await r.json(content_type=None)
    except (aiohttp.ClientError, TimeoutError, ValueError):
        return False
    return learn(backend, data)


def learn(backend: Backend, data: Any) -> bool:
    """Fill `backend.served_model` (and `max_model_len`) from a parsed `/v1/models` answer
    (a spawned engine's readiness check already fetched it: no second request)."""
    cards = data.get("data") if isinstance(data, dict) else None
    if not isinstance(cards, list) or not cards or not isinstance(cards[0], dict):
        return False
    first = cards[0]
    if isinstance(first.get("id"), str):
        backend.served_model = first["id"]
    mml = first.get("max_model_len") or (first.get("meta") or {}).get("n_ctx_train")
    if isinstance(mml, int):
        backend.max_model_len = mml
    return True


async def discover_until_known(session: aiohttp.ClientSession, backend: Backend) -> None:
    """Retry discovery with backoff until it succeeds (the engine may be down); cancel to stop."""
    delay = 0.5
    while backend.served_model is None:
        if await discover(session, backend):
            log.info("backend %s serves %r", backend.id, backend.served_model)
            return
        await asyncio.sleep(delay)
        delay = min(delay * 2, 30.0)
