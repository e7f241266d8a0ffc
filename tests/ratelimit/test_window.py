"""The rolling-window guarantee (issue #14, finding 2): `rpm: N` admits at most N requests
in ANY 60 s window, and `tpm` likewise for tokens, in-process and across replicas.

GCRA (the old algorithm) admitted a burst of N and then refilled one every 60/N s, so up
to ~2N in the first minute; these tests failed on it."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from typing import Any

import pytest
import redis

from gateway.config import GatewayConfig
from gateway.ratelimit import Limiter, RateLimited, local_counters
from tests.metering.ctxs import ctx, key, usage
from tests.redis_server import RedisServer


class FakeClock:
    def __init__(self) -> None:
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> FakeClock:
    c = FakeClock()
    monkeypatch.setattr(local_counters.time, "monotonic", c)
    return c


@pytest.fixture(scope="module")
def redis_srv() -> Iterator[RedisServer]:
    with RedisServer() as rs:
        yield rs


def _cfg(url: str | None) -> GatewayConfig:
    return GatewayConfig.model_validate({"store": "memory://", "redis": url, "auth": {"mode": "none"}})


def _body(max_tokens: int = 100) -> dict[str, Any]:
    return {"model": "chat", "messages": [{"role": "user", "content": "hi"}], "max_tokens": max_tokens}


async def _admit(lim: Limiter, k: Any, n: int, max_tokens: int = 100) -> int:
    ok = 0
    for _ in range(n):
        try:
            await lim.admit(k, ctx(body=_body(max_tokens)))
            ok += 1
        except RateLimited:
            pass
    return ok


def test_rpm_never_more_than_n_in_any_rolling_minute(clock: FakeClock) -> None:
    async def main() -> None:
        lim = await Limiter.start(_cfg(None), None)
        k = key("roll", rpm=60)
        # 20 at t=0, 40 at t=30: the window is full.
        assert await _admit(lim, k, 20) == 20
        clock.t += 30
        assert await _admit(lim, k, 100) == 40
        clock.t += 29.9  # t=59.9: all 60 still inside the last minute (GCRA admitted ~60 more)
        assert await _admit(lim, k, 10) == 0
        clock.t += 0.2  # t=60.1: the first 20 left the window, the other 40 did not
        with pytest.raises(RateLimited) as e:
            for _ in range(21):
                await lim.admit(k, ctx())
        # Retry when the oldest of the 40 (logged at t=30) leaves: at t=90.
        assert 29 <= float(e.value.headers["retry-after-ms"]) / 1000 <= 30
        clock.t += 30  # t=90.1: the 40 left too
        assert await _admit(lim, k, 100) == 40
        await lim.close()

    asyncio.run(main())


def test_tpm_counts_estimates_until_settled_then_real_tokens_until_a_minute_after(clock: FakeClock) -> None:
    async def main() -> None:
        lim = await Limiter.start(_cfg(None), None)
        k = key("tok", tpm=1000)
        a = await lim.admit(k, ctx(body=_body(300)))
        est = a.request.cost  # type: ignore[union-attr]
        assert 300 < est < 320  # so three fit in 1000, four do not
        assert await _admit(lim, k, 5, 300) == 2  # t=0: a, b, c
        clock.t += 50
        await lim.settle(a, ctx(usage=usage(15, 5)))  # a used 20: logged at t=50 now
        assert await _admit(lim, k, 5, 300) == 1  # t=50: 2*est + 20 + est fits, one more does not
        clock.t += 10.1  # t=60.1: b and c (t=0) left; a's 20 and d (t=50) did not
        assert await _admit(lim, k, 5, 300) == 2  # 20 + 3*est <= 1000 < 20 + 4*est
        clock.t += 49.8  # t=109.9: still full
        assert await _admit(lim, k, 1, 300) == 0
        clock.t += 0.2  # t=110.1: a's 20 and d left
        with pytest.raises(RateLimited) as e:
            await lim.admit(k, ctx(body=_body(1000 - 2 * est)))  # one token more than is left
        assert e.value.reason == "tpm"
        await lim.admit(k, ctx(body=_body(300)))
        await lim.close()

    asyncio.run(main())


@pytest.mark.parametrize("where", ["local", "redis"])
def test_150_requests_spread_over_3s_admit_exactly_60(where: str, redis_srv: RedisServer) -> None:
    redis.Redis.from_url(redis_srv.url).flushall()

    async def main() -> None:
        lim = await Limiter.start(_cfg(redis_srv.url if where == "redis" else None), None)
        k = key("spread", rpm=60)
        ok = 0
        t0 = time.monotonic()
        for i in range(150):
            await asyncio.sleep(max(0.0, t0 + i * 0.02 - time.monotonic()))  # evenly over 3 s
            try:
                await lim.admit(k, ctx())
                ok += 1
            except RateLimited as e:
                last = e
        assert ok == 60  # GCRA: 62 or 63
        # Nothing leaves the window before the first admission is a minute old.
        assert int(last.headers["retry-after"]) >= 56
        await lim.close()

    asyncio.run(main())


def test_redis_and_local_agree_on_headers(redis_srv: RedisServer) -> None:
    redis.Redis.from_url(redis_srv.url).flushall()

    async def main() -> None:
        for url in (None, redis_srv.url):
            lim = await Limiter.start(_cfg(url), None)
            k = key(f"hdr-{bool(url)}", rpm=10, tpm=10_000)
            a1 = await lim.admit(k, ctx())
            a2 = await lim.admit(k, ctx())
            first, second = lim.headers(a1), lim.headers(a2)
            assert (first["x-ratelimit-remaining-requests"], second["x-ratelimit-remaining-requests"]) == ("9", "8")
            # Reset = until the window is empty again: a minute after the newest request.
            assert first["x-ratelimit-reset-requests"] == second["x-ratelimit-reset-requests"] == "1m0s"
            cost = a1.request.cost  # type: ignore[union-attr]
            assert int(second["x-ratelimit-remaining-tokens"]) == 10_000 - 2 * cost
            await lim.close()

    asyncio.run(main())
