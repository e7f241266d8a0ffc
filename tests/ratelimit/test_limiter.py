"""Rate limits and budgets: in-process, two limiters on one Redis, two processes on one Redis."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis

from gateway.config import GatewayConfig
from gateway.metering import Meter, UsageRecord
from gateway.metering.store_memory import MemoryStore
from gateway.ratelimit import NOOP, Limiter, RateLimited, format_duration, parse_budget
from tests.metering.ctxs import ctx, key, usage
from tests.redis_server import RedisServer

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def redis_srv() -> Iterator[RedisServer]:
    with RedisServer() as rs:
        yield rs


@pytest.fixture(params=["local", "redis"])
def cfg(request: pytest.FixtureRequest, redis_srv: RedisServer) -> GatewayConfig:
    redis.Redis.from_url(redis_srv.url).flushall()
    url = redis_srv.url if request.param == "redis" else None
    return GatewayConfig.model_validate({"store": "memory://", "redis": url, "auth": {"mode": "none"}})


def small(max_tokens: int = 100) -> dict[str, Any]:
    return {"model": "chat", "messages": [{"role": "user", "content": "hi"}], "max_tokens": max_tokens}


async def _admit_many(lims: list[Limiter], k: Any, n: int, body: dict[str, Any] | None = None) -> tuple[int, list[RateLimited]]:
    ok, refused = 0, []
    for i in range(n):
        try:
            await lims[i % len(lims)].admit(k, ctx(body=body or small()))
            ok += 1
        except RateLimited as e:
            refused.append(e)
    return ok, refused


def test_keys_without_limits_cost_nothing() -> None:
    class Exploding:
        async def admit(self, r: object) -> None:
            raise AssertionError("a key without limits reached the backend")

    async def main() -> None:
        lim = Limiter(Exploding())  # type: ignore[arg-type]
        adm = await lim.admit(key("free"), ctx())
        assert adm is NOOP and lim.headers(adm) == {}
        await lim.settle(adm, ctx())
        k, c = key("free"), ctx()
        t0 = time.perf_counter()
        for _ in range(10_000):
            await lim.admit(k, c)
        assert (time.perf_counter() - t0) / 10_000 < 20e-6

    asyncio.run(main())


def test_rpm_60_admits_exactly_60_of_100(cfg: GatewayConfig) -> None:
    async def main() -> None:
        lim = await Limiter.start(cfg, None)
        assert type(lim.counters).__name__ == ("RedisCounters" if cfg.redis_url else "LocalCounters")
        k = key("rpm60", rpm=60)
        ok, refused = await _admit_many([lim], k, 100)
        assert (ok, len(refused)) == (60, 40)
        e = refused[0]
        assert e.status == 429 and e.code == "rate_limit_exceeded" and e.reason == "rpm"
        assert 1 <= int(e.headers["retry-after"]) <= 60
        assert e.headers["x-ratelimit-limit-requests"] == "60"
        assert e.headers["x-ratelimit-remaining-requests"] == "0"
        assert e.headers["x-ratelimit-reset-requests"].endswith("s")
        await lim.close()

    asyncio.run(main())


def test_two_limiters_on_one_redis_share_one_limit(redis_srv: RedisServer) -> None:
    redis.Redis.from_url(redis_srv.url).flushall()
    c = GatewayConfig.model_validate({"store": "memory://", "redis": redis_srv.url, "auth": {"mode": "none"}})

    async def main() -> None:
        a, b = await Limiter.start(c, None), await Limiter.start(c, None)
        ok, _ = await _admit_many([a, b], key("shared", rpm=60), 100)
        assert ok == 60
        await a.close()
        await b.close()

    asyncio.run(main())


_CHILD = """
import asyncio, json, sys
import redis.asyncio as aioredis
from gateway.config import GatewayConfig
from gateway.ratelimit import Limiter, RateLimited
from tests.metering.ctxs import ctx, key

async def main(url, n):
    cfg = GatewayConfig.model_validate({"store": "memory://", "redis": url, "auth": {"mode": "none"}})
    lim = await Limiter.start(cfg, None)
    r = aioredis.Redis.from_url(url)
    await r.rpush("ready", 1)
    await r.blpop(["go"], timeout=30)
    k, ok = key("procs", rpm=60), 0
    for _ in range(n):
        try:
            await lim.admit(k, ctx())
            ok += 1
        except RateLimited:
            pass
    await r.aclose()
    await lim.close()
    print(json.dumps({"ok": ok}))

asyncio.run(main(sys.argv[1], int(sys.argv[2])))
"""


def test_two_gateway_processes_on_one_redis_share_one_limit(redis_srv: RedisServer) -> None:
    r = redis.Redis.from_url(redis_srv.url)
    r.flushall()
    procs = [
        subprocess.Popen([sys.executable, "-c", _CHILD, redis_srv.url, "50"], cwd=ROOT, stdout=subprocess.PIPE)
        for _ in range(2)
    ]
    try:
        deadline = time.monotonic() + 30
        while r.llen("ready") < 2:  # both processes imported everything and connected
            assert time.monotonic() < deadline and all(p.poll() is None for p in procs)
            time.sleep(0.01)
        r.rpush("go", 1, 1)
        outs = [json.loads(p.communicate(timeout=30)[0]) for p in procs]
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
    assert sum(o["ok"] for o in outs) == 60, outs
    assert all(o["ok"] > 0 for o in outs)  # both really competed
    r.close()


def test_tpm_charges_an_estimate_then_reconciles(cfg: GatewayConfig) -> None:
    async def main() -> None:
        lim = await Limiter.start(cfg, None)
        k = key("tpm", tpm=1000)
        adm = await lim.admit(k, ctx(body=small(300)))
        charged = adm.request.cost  # type: ignore[union-attr]
        assert 300 < charged < 320
        h = lim.headers(adm)
        assert h["x-ratelimit-limit-tokens"] == "1000"
        assert int(h["x-ratelimit-remaining-tokens"]) == 1000 - charged
        ok, refused = await _admit_many([lim], k, 5, small(300))
        assert ok == 2 and refused[0].reason == "tpm" and refused[0].code == "rate_limit_exceeded"
        # The first request really used 20 tokens: the difference is given back.
        await lim.settle(adm, ctx(usage=usage(15, 5)))
        ok, _ = await _admit_many([lim], k, 1, small(270))
        assert ok == 1
        await lim.close()

    asyncio.run(main())


def test_a_request_bigger_than_the_tpm_is_capped_not_refused_forever(cfg: GatewayConfig) -> None:
    async def main() -> None:
        lim = await Limiter.start(cfg, None)
        k = key("tiny", tpm=50)
        adm = await lim.admit(k, ctx(body=small(4000)))
        assert adm.request.cost == 50  # type: ignore[union-attr]
        # It then used far more than the limit: the next request waits, but never > 60 s.
        await lim.settle(adm, ctx(usage=usage(10, 4000)))
        with pytest.raises(RateLimited) as e:
            await lim.admit(k, ctx(body=small(10)))
        assert int(e.value.headers["retry-after"]) == 60
        assert int(e.value.headers["retry-after-ms"]) <= 60_000
        await lim.close()

    asyncio.run(main())


def test_concurrency_slots_are_released_by_settle(cfg: GatewayConfig) -> None:
    async def main() -> None:
        lim = await Limiter.start(cfg, None)
        k = key("conc", max_concurrent=2)
        a1 = await lim.admit(k, ctx())
        await lim.admit(k, ctx())
        with pytest.raises(RateLimited) as e:
            await lim.admit(k, ctx())
        assert e.value.reason == "concurrent" and e.value.headers["retry-after"] == "1"
        await lim.settle(a1, ctx(usage=usage(1, 1)))
        await lim.settle(a1, ctx(usage=usage(1, 1)))  # twice: releases once
        await lim.admit(k, ctx())
        with pytest.raises(RateLimited):
            await lim.admit(k, ctx())
        await lim.close()

    asyncio.run(main())


def test_budget_exhausted_is_insufficient_quota(cfg: GatewayConfig) -> None:
    async def main() -> None:
        lim = await Limiter.start(cfg, None)
        k = key("budget", budget="1000/day")
        a = await lim.admit(k, ctx())
        await lim.settle(a, ctx(usage=usage(500, 100)))
        b = await lim.admit(k, ctx())  # 600 spent: still under
        await lim.settle(b, ctx(usage=usage(300, 100)))
        with pytest.raises(RateLimited) as e:
            await lim.admit(k, ctx())
        err = e.value
        assert err.status == 429 and err.code == "insufficient_quota" and err.type == "insufficient_quota"
        assert err.headers["x-should-retry"] == "false" and "retry-after" not in err.headers
        ctx_refused = ctx()
        with pytest.raises(RateLimited):
            await lim.admit(k, ctx_refused)
        assert ctx_refused.admission.refused == "budget"  # what the metrics read
        await lim.close()

    asyncio.run(main())


def test_budget_is_seeded_from_the_ledger(cfg: GatewayConfig) -> None:
    async def main() -> None:
        store = MemoryStore()
        now = time.time()
        old = UsageRecord(ts=now - 40 * 86400, key="seeded", total_tokens=10_000)
        recent = UsageRecord(ts=now - 1, key="seeded", total_tokens=900)
        await store.write([old, recent], "b")
        meter = Meter(store)
        lim = await Limiter.start(cfg, meter)
        adm = await lim.admit(key("seeded", budget="1000/month"), ctx())  # 900 of 1000 spent
        await lim.settle(adm, ctx(usage=usage(100, 0)))
        with pytest.raises(RateLimited) as e:
            await lim.admit(key("seeded", budget="1000/month"), ctx())
        assert e.value.code == "insufficient_quota"
        await lim.close()

    asyncio.run(main())


def test_redis_down_degrades_to_local_limits_without_waiting() -> None:
    """Nothing listens: admissions are decided here (never admitted without limits), fast."""
    rs = RedisServer()  # never started: nothing listens on its port
    c = GatewayConfig.model_validate({"store": "memory://", "redis": rs.url, "auth": {"mode": "none"}})

    async def main() -> None:
        lim = await Limiter.start(c, None)
        t0 = time.monotonic()
        adm = await lim.admit(key("k", rpm=1), ctx())
        assert adm.degraded and adm is not NOOP
        with pytest.raises(RateLimited):
            await lim.admit(key("k", rpm=1), ctx())
        assert time.monotonic() - t0 < 1.0
        assert sum(lim.degraded.values()) == 2
        await lim.close()

    try:
        asyncio.run(main())
    finally:
        rs.close()


def test_headers_and_formats() -> None:
    assert format_duration(0) == "0s"
    assert format_duration(0.02) == "20ms"
    assert format_duration(1) == "1s"
    assert format_duration(1.5) == "1.5s"
    assert format_duration(360) == "6m0s"
    assert parse_budget("5000000/month").limit == 5_000_000
    assert parse_budget("100").period == "lifetime"
    with pytest.raises(ValueError):
        parse_budget("5/fortnight")

    async def main() -> None:
        lim = await Limiter.start(GatewayConfig.model_validate({"store": "memory://", "auth": {"mode": "none"}}), None)
        k = key("both", rpm=10, tpm=10_000)
        first = lim.headers(await lim.admit(k, ctx()))
        second = lim.headers(await lim.admit(k, ctx()))
        assert set(first) == {
            "x-ratelimit-limit-requests", "x-ratelimit-remaining-requests", "x-ratelimit-reset-requests",
            "x-ratelimit-limit-tokens", "x-ratelimit-remaining-tokens", "x-ratelimit-reset-tokens",
        }  # fmt: skip
        assert (first["x-ratelimit-remaining-requests"], second["x-ratelimit-remaining-requests"]) == ("9", "8")
        # Reset = time until the window is empty again (tests/ratelimit/test_window.py).
        assert first["x-ratelimit-reset-requests"] == second["x-ratelimit-reset-requests"] == "1m0s"
        assert lim.headers(await lim.admit(key("rpm-only", rpm=5), ctx())).keys() == {
            "x-ratelimit-limit-requests", "x-ratelimit-remaining-requests", "x-ratelimit-reset-requests"}
        await lim.close()

    asyncio.run(main())
