"""The meter end to end below HTTP: contexts in, exact ledger out, whatever the store does."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from pathlib import Path

from gateway import tokens
from gateway.config import GatewayConfig
from gateway.metering import Meter
from tests.metering.ctxs import chunk, ctx, usage
from tests.redis_server import RedisServer


def cfg(store: str, flush: float = 0.05) -> GatewayConfig:
    return GatewayConfig.model_validate(
        {"store": store, "auth": {"mode": "none"}, "metering": {"flush_interval": flush, "buffer_max": 100_000}}
    )


async def _until(pred: Callable[[], bool], within: float = 10.0) -> None:
    deadline = time.monotonic() + within
    while not pred():
        if time.monotonic() > deadline:
            raise AssertionError("condition not reached in time")
        await asyncio.sleep(0.01)


def _mixed(i: int) -> object:
    """Request i of a mixed run: exact usage, cut-short streams, embeddings, refusals."""
    kind = i % 4
    if kind == 0:
        return ctx(usage=usage(10, 5), request_id=f"r{i}", user="u1")
    if kind == 1:
        return ctx(stream=True, request_id=f"r{i}", key_name="bob",
                   body={"model": "chat", "messages": [{"role": "user", "content": "hello there"}]},
                   delivered=[chunk([{"index": 0, "delta": {"content": " the model"}}])])  # fmt: skip
    if kind == 2:
        return ctx(endpoint="embeddings", pool_name="embed", usage={"prompt_tokens": 7, "total_tokens": 7},
                   request_id=f"r{i}")  # fmt: skip
    return ctx(status=429, dispatched=False, request_id=f"r{i}")


CUT_PROMPT = tokens.count_chat_prompt([{"role": "user", "content": "hello there"}])
CUT_TOTAL = CUT_PROMPT + 2  # " the model" = 2 tokens


def _expected(n: int) -> dict[str, int]:
    quarters = n // 4
    return {"requests": n, "total_tokens": quarters * (15 + CUT_TOTAL + 7), "estimated_requests": quarters}


async def _run_and_check(meter: Meter, n: int = 200) -> None:
    for i in range(n):
        meter.record(_mixed(i))  # type: ignore[arg-type]
    await _until(lambda: meter.buffered == 0)
    rows = await meter.query("pool", None, None)
    total = {k: sum(r[k] for r in rows) for k in ("requests", "total_tokens", "estimated_requests")}
    assert total == _expected(n)
    by_key = {r["key"]: r for r in await meter.query("key", None, None)}
    assert by_key["bob"]["total_tokens"] == (n // 4) * CUT_TOTAL
    assert by_key["bob"]["estimated_requests"] == n // 4


def test_meter_on_sqlite(tmp_path: Path) -> None:
    async def main() -> None:
        meter = await Meter.start(cfg(f"sqlite:///{tmp_path}/usage.db"))
        await _run_and_check(meter)
        # Records arriving right before close are flushed by close.
        for i in range(200, 240):
            meter.record(_mixed(i))  # type: ignore[arg-type]
        await meter.close()
        again = await Meter.start(cfg(f"sqlite:///{tmp_path}/usage.db"))
        rows = await again.query("day", None, None)
        assert sum(r["requests"] for r in rows) == 240
        await again.close()

    asyncio.run(main())


def test_meter_on_redis(redis_server: RedisServer) -> None:
    async def main() -> None:
        meter = await Meter.start(cfg(redis_server.url))
        await _run_and_check(meter)
        await meter.close()

    asyncio.run(main())


def test_redis_stopped_mid_run_loses_nothing_once_it_is_back(redis_persistent: RedisServer) -> None:
    async def main() -> None:
        meter = await Meter.start(cfg(redis_persistent.url))
        for i in range(100):
            meter.record(_mixed(i))  # type: ignore[arg-type]
        await _until(lambda: meter.buffered == 0)
        await asyncio.to_thread(redis_persistent.stop)
        for i in range(100, 300):
            meter.record(_mixed(i))  # type: ignore[arg-type]
        await _until(lambda: meter.writer.failures >= 2)
        assert meter.buffered == 200
        await asyncio.to_thread(redis_persistent.start)
        await _until(lambda: meter.buffered == 0, within=20)
        rows = await meter.query("pool", None, None)
        assert {k: sum(r[k] for r in rows) for k in _expected(300)} == _expected(300)
        await meter.close()

    asyncio.run(main())


def test_redis_down_at_start_up_buffers_until_it_answers() -> None:
    rs = RedisServer()
    try:
        async def main() -> None:
            meter = await Meter.start(cfg(rs.url))  # nothing listens on the port yet
            for i in range(40):
                meter.record(_mixed(i))  # type: ignore[arg-type]
            await _until(lambda: meter.writer.failures >= 1)
            await asyncio.to_thread(rs.start)
            await _until(lambda: meter.buffered == 0, within=20)
            rows = await meter.query("key", None, None)
            assert sum(r["requests"] for r in rows) == 40
            await meter.close()

        asyncio.run(main())
    finally:
        rs.close()


def test_record_never_raises_and_disabled_meter_records_nothing() -> None:
    async def main() -> None:
        meter = await Meter.start(cfg("memory://"))
        meter.record(object())  # type: ignore[arg-type]  # a broken context is logged, not raised
        meter.enabled = False
        meter.record(_mixed(0))  # type: ignore[arg-type]
        assert meter.buffered == 0
        await meter.close()

    asyncio.run(main())


def test_estimated_tokens_are_exposed_for_metrics() -> None:
    async def main() -> None:
        meter = await Meter.start(cfg("memory://"))
        meter.record(_mixed(1))  # type: ignore[arg-type]
        await meter.flush()
        assert meter.estimated_tokens == {("chat", "bob"): [CUT_PROMPT, 2]}
        await meter.close()

    asyncio.run(main())
