"""Prototype: scrape external endpoints' /metrics for the balancer (proposed for engines/health).

Today only spawned engines' gauges are scraped (after each health probe, every
`health.interval`, 5 s by default); external endpoints' `engine_running` and
`engine_waiting` stay 0. This loop fills them for every backend, and learns the engine's
batch size the only stable way the gauges allow: the most requests it ran at once while
others waited (a full batch), kept in `Backend.extra["engine_capacity"]`.
"""

from __future__ import annotations

import asyncio
from typing import Any

import aiohttp

from gateway.engines.health import parse_gauges

RUNNING = ("vllm:num_requests_running", "sglang:num_running_reqs", "lmdeploy:num_requests_running",
           "llamacpp:requests_processing")
WAITING = ("vllm:num_requests_waiting", "sglang:num_queue_reqs", "lmdeploy:num_requests_waiting",
           "llamacpp:requests_deferred")


def metrics_url(base: str) -> str:
    return (base[: -len("/v1")] if base.endswith("/v1") else base) + "/metrics"


def apply(backend: Any, gauges: dict[str, float]) -> None:
    running = next((gauges[n] for n in RUNNING if n in gauges), None)
    waiting = next((gauges[n] for n in WAITING if n in gauges), None)
    if running is None or waiting is None:
        return
    backend.engine_running, backend.engine_waiting = running, waiting
    if waiting > 0 and running >= 1:
        known = backend.extra.get("engine_capacity")
        backend.extra["engine_capacity"] = max(int(running), known if isinstance(known, int) else 0)


async def scrape_once(session: aiohttp.ClientSession, backend: Any) -> None:
    try:
        async with session.get(metrics_url(backend.url), timeout=aiohttp.ClientTimeout(total=1.0)) as r:
            if r.status != 200:
                return
            text = (await r.read()).decode("utf-8", "replace")
    except (aiohttp.ClientError, TimeoutError):
        return
    apply(backend, parse_gauges(text, set(RUNNING + WAITING)))


async def scrape_forever(state: Any, interval: float) -> None:
    async with aiohttp.ClientSession() as session:
        while True:
            backends = [b for p in state.pools.values() for b in p.backends]
            await asyncio.gather(*(scrape_once(session, b) for b in backends))
            await asyncio.sleep(interval)
