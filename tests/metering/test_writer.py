"""The batching writer: batches, flush interval, close, a store that is down or slow, overflow."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable

import pytest

from gateway.metering.record import UsageRecord
from gateway.metering.store_memory import MemoryStore
from gateway.metering.writer import Writer


def rec(i: int) -> UsageRecord:
    return UsageRecord(ts=1_700_000_000 + i, request_id=f"r{i}", key="k", prompt_tokens=1, total_tokens=1)


async def _until(pred: Callable[[], bool], within: float = 5.0) -> None:
    deadline = time.monotonic() + within
    while not pred():
        if time.monotonic() > deadline:
            raise AssertionError("condition not reached in time")
        await asyncio.sleep(0.005)


def test_records_are_written_in_batches_every_interval_and_on_close() -> None:
    async def main() -> None:
        store = MemoryStore()
        w = Writer(store, buffer_max=10_000, flush_interval=0.2)
        w.start()
        t0 = time.monotonic()
        for i in range(50):
            w.add(rec(i))
        assert store.records == []  # add never writes
        await _until(lambda: len(store.records) == 50)
        waited = time.monotonic() - t0
        assert 0.1 < waited < 1.0, waited  # written by the periodic flush, not at once
        assert store.writes == 1  # one batch
        for i in range(50, 60):
            w.add(rec(i))
        assert await w.close(grace_s=5) == 0
        assert [r.request_id for r in store.records] == [f"r{i}" for i in range(60)]

    asyncio.run(main())


def test_a_full_batch_is_written_without_waiting_for_the_interval() -> None:
    async def main() -> None:
        store = MemoryStore()
        w = Writer(store, buffer_max=400, flush_interval=30.0)  # batch = 100
        w.start()
        for i in range(250):
            w.add(rec(i))
        await _until(lambda: len(store.records) >= 200)
        await w.close()
        assert len(store.records) == 250 and store.writes == 3

    asyncio.run(main())


def test_store_down_buffers_and_loses_nothing_when_it_returns(caplog: pytest.LogCaptureFixture) -> None:
    async def main() -> None:
        store = MemoryStore()
        store.fail = ConnectionError("store is down")
        w = Writer(store, buffer_max=10_000, flush_interval=0.05)
        w.start()
        for i in range(30):
            w.add(rec(i))
        await _until(lambda: w.failures >= 3)
        assert store.records == [] and w.buffered == 30
        for i in range(30, 40):
            w.add(rec(i))
        store.fail = None
        await _until(lambda: len(store.records) == 40, within=10)
        assert w.buffered == 0 and w.dropped == 0
        await w.close()
        assert sorted(r.request_id for r in store.records) == sorted(f"r{i}" for i in range(40))

    with caplog.at_level(logging.WARNING, logger="gateway.metering"):
        asyncio.run(main())
    assert any("write failed" in m for m in caplog.messages)
    assert any("is back" in m for m in caplog.messages)


def test_a_slow_store_never_slows_add() -> None:
    class Slow(MemoryStore):
        async def write(self, records: object, batch_id: str) -> None:
            await asyncio.sleep(0.5)
            await super().write(records, batch_id)  # type: ignore[arg-type]

    async def main() -> None:
        store = Slow()
        w = Writer(store, buffer_max=100_000, flush_interval=0.01)
        w.start()
        w.add(rec(0))
        await _until(lambda: w._inflight)
        t0 = time.perf_counter()
        for i in range(1, 10_001):
            w.add(rec(i))
        per_add = (time.perf_counter() - t0) / 10_000
        assert per_add < 50e-6, per_add  # microseconds, while a write is stuck
        await w.close(grace_s=10)
        assert len(store.records) == 10_001

    asyncio.run(main())


def test_overflow_drops_the_oldest_and_counts_it(caplog: pytest.LogCaptureFixture) -> None:
    async def main() -> None:
        store = MemoryStore()
        store.fail = ConnectionError("down")
        w = Writer(store, buffer_max=100, flush_interval=0.02)
        w.start()
        for i in range(60):
            w.add(rec(i))
        await _until(lambda: w.failures >= 1)  # a batch of the oldest 25 is waiting for a retry
        for i in range(60, 150):
            w.add(rec(i))
        assert w.buffered == 100 and w.dropped == 50
        store.fail = None
        await w.close()
        assert [r.request_id for r in store.records] == [f"r{i}" for i in range(50, 150)]

    with caplog.at_level(logging.WARNING, logger="gateway.metering"):
        asyncio.run(main())
    assert any("usage buffer full" in m for m in caplog.messages)


def test_close_gives_up_after_the_grace_period_and_reports_the_loss() -> None:
    async def main() -> None:
        store = MemoryStore()
        store.fail = ConnectionError("down")
        w = Writer(store, buffer_max=1000, flush_interval=0.05)
        w.start()
        for i in range(5):
            w.add(rec(i))
        t0 = time.monotonic()
        assert await w.close(grace_s=0.3) == 5
        assert time.monotonic() - t0 < 2

    asyncio.run(main())


def test_a_retried_batch_is_not_written_twice() -> None:
    class LandsThenTimesOut(MemoryStore):
        calls = 0

        async def write(self, records: object, batch_id: str) -> None:
            self.calls += 1
            await super().write(records, batch_id)  # type: ignore[arg-type]
            if self.calls == 1:
                raise TimeoutError("the write landed but the answer was lost")

    async def main() -> None:
        store = LandsThenTimesOut()
        w = Writer(store, buffer_max=1000, flush_interval=0.02)
        for i in range(10):
            w.add(rec(i))
        assert await w.flush() is False
        assert await w.flush() is True
        assert len(store.records) == 10 and store.calls == 2

    asyncio.run(main())


def test_group_commit_writes_each_record_within_the_window_and_idles_for_free() -> None:
    """Issue #14, finding 4: what a SIGKILL loses is bounded by this window."""

    async def main() -> None:
        store = MemoryStore()
        w = Writer(store, buffer_max=10_000, flush_interval=0.1)
        w.start()
        await asyncio.sleep(0.3)
        assert store.writes == 0  # nothing buffered: no empty commits
        lags = []
        for group in range(5):
            added = time.monotonic()
            for i in range(20):
                w.add(rec(group * 100 + i))
            want = (group + 1) * 20
            await _until(lambda: len(store.records) == want, within=2.0)  # noqa: B023
            lags.append(time.monotonic() - added)
            await asyncio.sleep(0.05 * group)  # groups at irregular times
        assert store.writes == 5  # one commit per group
        assert max(lags) < 0.2, lags  # window 0.1 s + the write
        assert await w.close() == 0

    asyncio.run(main())
