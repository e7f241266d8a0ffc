"""routing/affinity.py: the id -> backend map, bounded, expiring, and shared through Redis."""

from __future__ import annotations

import asyncio
import functools
from collections.abc import Callable, Coroutine
from typing import Any

import pytest

from gateway.metering.store_redis import connect
from gateway.routing.affinity import Holder, ResponseAffinity
from gateway.routing.backend import Backend
from tests.redis_server import RedisServer


def backend(bid: str = "chat@http://e1/v1", source: str = "endpoint", restarts: int = 0) -> Backend:
    return Backend(id=bid, pool="chat", url="http://e1/v1", max_concurrency=4, source=source, restarts=restarts)


def sync(fn: Callable[..., Coroutine[Any, Any, None]]) -> Callable[..., None]:
    """Run an async test in its own event loop (the suite has no asyncio plugin)."""

    @functools.wraps(fn)
    def run(*args: Any, **kwargs: Any) -> None:
        asyncio.run(fn(*args, **kwargs))

    return run


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@sync
async def test_records_and_finds_the_holder_with_its_restart_count() -> None:
    a = ResponseAffinity()
    a.record("resp_1", backend(restarts=2))
    assert await a.lookup("resp_1") == Holder("chat", "chat@http://e1/v1", 2)
    assert await a.lookup("resp_2") is None


@sync
async def test_bounded_by_dropping_the_oldest_recorded() -> None:
    a = ResponseAffinity(max_entries=3)
    for i in range(5):
        a.record(f"resp_{i}", backend())
    assert len(a) == 3
    assert await a.lookup("resp_0") is None and await a.lookup("resp_1") is None
    assert await a.lookup("resp_4") is not None


@sync
async def test_entries_expire_after_the_ttl() -> None:
    clock = Clock()
    a = ResponseAffinity(ttl=60, clock=clock)
    a.record("resp_1", backend())
    clock.now += 59
    assert await a.lookup("resp_1") is not None
    clock.now += 2
    assert await a.lookup("resp_1") is None
    assert len(a) == 0  # an expired entry is dropped when found


@sync
async def test_replicas_share_endpoint_backends_through_redis_but_not_spawned_ones(redis_server: RedisServer) -> None:
    one = ResponseAffinity(ttl=30, redis=connect(redis_server.url))
    two = ResponseAffinity(ttl=30, redis=connect(redis_server.url))
    try:
        one.record("resp_e", backend())
        one.record("resp_s", backend("chat-vllm-0", source="spawned"))
        await asyncio.gather(*one._writes)
        assert await two.lookup("resp_e") == Holder("chat", "chat@http://e1/v1", 0)
        # A spawned engine's id names a different process on every replica.
        assert await two.lookup("resp_s") is None
        ttl = await two.redis.ttl("gw:resp:resp_e")  # type: ignore[union-attr]
        assert 0 < ttl <= 30
    finally:
        await one.close()
        await two.close()


@sync
async def test_redis_down_is_a_miss_not_an_error(redis_server: RedisServer) -> None:
    a = ResponseAffinity(redis=connect(redis_server.url))
    redis_server.stop()
    try:
        a.record("resp_1", backend())  # the write fails in its task; the local entry stands
        await asyncio.gather(*a._writes)
        assert await a.lookup("resp_1") is not None
        assert await a.lookup("resp_unknown") is None
    finally:
        await a.close()


@pytest.mark.parametrize("raw", [b"chat\x1fb1", b"chat\x1fb1\x1fx"])
@sync
async def test_older_or_odd_redis_values_read_as_restart_zero(redis_server: RedisServer, raw: bytes) -> None:
    a = ResponseAffinity(redis=connect(redis_server.url))
    try:
        assert a.redis is not None
        await a.redis.set("gw:resp:resp_x", raw)
        assert await a.lookup("resp_x") == Holder("chat", "b1", 0)
    finally:
        await a.close()
