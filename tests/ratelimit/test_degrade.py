"""Redis unreachable or paused: the limiter decides locally against this replica's share
of each limit, counts every such decision, and logs them to Redis once it is back
(issue #14, finding 1). The old limiter admitted everything for a second after any Redis
error; these tests failed on it."""

from __future__ import annotations

import asyncio
import os
import signal
from collections.abc import Iterator

import pytest
import redis

from gateway.config import GatewayConfig
from gateway.ratelimit import Limiter, RateLimited
from tests.metering.ctxs import ctx, key
from tests.redis_server import RedisServer


@pytest.fixture
def redis_srv() -> Iterator[RedisServer]:
    with RedisServer() as rs:
        yield rs


async def _admit(lim: Limiter, k: object, n: int) -> int:
    ok = 0
    for _ in range(n):
        try:
            await lim.admit(k, ctx())  # type: ignore[arg-type]
            ok += 1
        except RateLimited:
            pass
    return ok


def test_paused_redis_degrades_to_each_replicas_share_and_catches_up(redis_srv: RedisServer) -> None:
    cfg = GatewayConfig.model_validate({"store": "memory://", "redis": redis_srv.url, "auth": {"mode": "none"}})
    assert redis_srv.proc is not None
    pid = redis_srv.proc.pid

    async def main() -> None:
        a, b = await Limiter.start(cfg, None), await Limiter.start(cfg, None)
        await a.counters.beat()  # type: ignore[union-attr]
        assert a.counters.replicas == b.counters.replicas == 2  # type: ignore[union-attr]
        k = key("paused", rpm=60)
        assert (await _admit(a, k, 10), await _admit(b, k, 10)) == (10, 10)
        os.kill(pid, signal.SIGSTOP)  # a CPU hiccup as long as you like: Redis answers nothing
        try:
            got_a, got_b = await asyncio.gather(_admit(a, k, 50), _admit(b, k, 50))
        finally:
            os.kill(pid, signal.SIGCONT)
        # Each replica: its share (60 // 2) minus what it had already admitted this minute.
        assert (got_a, got_b) == (20, 20)
        for lim in (a, b):
            assert lim.degraded.get("timeout", 0) >= 1
            assert sum(lim.degraded.values()) == 50
        # Back: each replica logs its local admissions in Redis at its next heartbeat.
        for _ in range(500):
            if not (a.counters.unsynced or b.counters.unsynced):  # type: ignore[union-attr]
                break
            await asyncio.sleep(0.01)
        assert not (a.counters.unsynced or b.counters.unsynced)  # type: ignore[union-attr]
        await asyncio.sleep(1.0)  # the backoff after the failure (REDIS_BACKOFF_S) is over
        assert await _admit(a, k, 5) + await _admit(b, k, 5) == 0
        assert redis.Redis.from_url(redis_srv.url).zcard("gw:rl:{paused}:rpm") == 60
        await a.close()
        await b.close()

    asyncio.run(main())


def test_a_share_of_zero_refuses_instead_of_over_admitting(redis_srv: RedisServer) -> None:
    cfg = GatewayConfig.model_validate({"store": "memory://", "redis": redis_srv.url, "auth": {"mode": "none"}})

    async def main() -> None:
        lims = [await Limiter.start(cfg, None) for _ in range(3)]
        for lim in lims:
            await lim.counters.beat()  # type: ignore[union-attr]
        redis_srv.stop()
        k = key("tiny", rpm=2, tpm=10_000)
        for lim in lims:
            with pytest.raises(RateLimited) as e:
                await lim.admit(k, ctx())
            assert e.value.reason == "rpm" and lim.degraded
        for lim in lims:
            await lim.close()

    asyncio.run(main())
