"""The three ledgers (memory, SQLite file, real Redis) answer every query identically."""

from __future__ import annotations

import asyncio
import os
import random
import sqlite3
from pathlib import Path
from typing import Any

import pytest

from gateway.metering.query import aggregate, parse_time, to_csv
from gateway.metering.record import UsageRecord
from gateway.metering.store import open_store
from tests.redis_server import RedisServer

T0 = 1_767_225_600.0  # 2026-01-01T00:00:00Z


def records(n: int = 400, seed: int = 1) -> list[UsageRecord]:
    rnd = random.Random(seed)
    out = []
    for i in range(n):
        p, c = rnd.randint(1, 500), rnd.randint(0, 300)
        out.append(UsageRecord(
            ts=T0 + rnd.uniform(0, 3 * 86400), request_id=f"r{i}", key=rnd.choice(["alice", "bob", None]),
            pool=rnd.choice(["chat", "embed"]), model=rnd.choice(["chat", "qwen", "embed"]), backend="b",
            endpoint="chat", prompt_tokens=p, completion_tokens=c, total_tokens=p + c, status=200,
            stream=rnd.random() < 0.5, latency=0.1, ttft=0.01, user=rnd.choice(["u1", "u2", None]),
            estimated=rnd.random() < 0.2, audio_seconds=rnd.choice([0, 0, 0, 1, 7, 30]),
        ))  # fmt: skip
    return out


RANGES: list[tuple[float | None, float | None]] = [
    (None, None),
    (T0 + 3600, T0 + 2 * 86400),  # whole hours
    (T0 + 1234.5, T0 + 86400 + 999.25),  # partial hours at both edges
    (T0 + 86400 + 100, None),
]


async def _check_store(url: str) -> None:
    recs = records()
    store = await open_store(url)
    try:
        for i in range(0, len(recs), 97):
            await store.write(recs[i : i + 97], batch_id=f"b{i}")
        for group in ("key", "pool", "user", "model", "hour", "day"):
            for since, until in RANGES:
                got = await store.query(group, since, until)
                assert got == aggregate(recs, group, since, until), (url, group, since, until)
        for since in (None, T0 + 5000.5):
            for who in ("alice", "bob", "nobody"):
                want = sum(r.total_tokens for r in recs if r.key == who and (since is None or r.ts >= since))
                assert await store.spend(who, since) == want
    finally:
        await store.close()


def test_sqlite_store_answers_like_the_reference(tmp_path: Path) -> None:
    asyncio.run(_check_store(f"sqlite:///{tmp_path}/deep/dir/usage.db"))
    conn = sqlite3.connect(tmp_path / "deep/dir/usage.db")
    assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    indexes = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type = 'index'")}
    assert {"usage_ts", "usage_key_ts", "usage_pool_ts", "usage_user_ts"} <= indexes
    plan = " ".join(str(r) for r in conn.execute("EXPLAIN QUERY PLAN SELECT key FROM usage WHERE ts >= 1"))
    assert "usage_ts" in plan
    conn.close()


def test_redis_store_answers_like_the_reference(redis_server: RedisServer) -> None:
    asyncio.run(_check_store(redis_server.url))


def test_memory_store_is_the_reference() -> None:
    asyncio.run(_check_store("memory://"))


def test_default_sqlite_path_is_relative_to_the_working_directory(tmp_path: Path) -> None:
    cwd = os.getcwd()
    os.chdir(tmp_path)
    try:
        from gateway.config import GatewayConfig

        url = GatewayConfig(auth={"mode": "none"}).store
        assert url == "sqlite:///var/usage.db"

        async def main() -> None:
            store = await open_store(url)
            await store.write(records(3), "b")
            await store.close()

        asyncio.run(main())
        assert (tmp_path / "var" / "usage.db").exists()
    finally:
        os.chdir(cwd)


def test_redis_batch_retry_is_idempotent(redis_server: RedisServer) -> None:
    async def main() -> None:
        store = await open_store(redis_server.url)
        recs = records(20)
        await store.write(recs, "same-batch")
        await store.write(recs, "same-batch")
        rows = await store.query("pool", None, None)
        assert sum(r["requests"] for r in rows) == 20
        await store.close()

    asyncio.run(main())


def test_sqlite_batch_is_all_or_nothing(tmp_path: Path) -> None:
    async def main() -> None:
        store = await open_store(f"sqlite:///{tmp_path}/u.db")
        bad = records(5)
        bad[3].prompt_tokens = "not a number"  # type: ignore[assignment]
        bad[3].total_tokens = None  # type: ignore[assignment]  # NOT NULL fails the whole batch
        with pytest.raises(sqlite3.IntegrityError):
            await store.write(bad, "b1")
        assert await store.query("key", None, None) == []
        await store.close()

    asyncio.run(main())


def test_time_parsing_and_csv() -> None:
    assert parse_time("24h", now=100_000.0) == 100_000.0 - 86400
    assert parse_time("2026-01-01") == T0
    assert parse_time("2026-01-01T01:00:00Z") == T0 + 3600
    assert parse_time(str(T0)) == T0
    assert parse_time(None) is None
    with pytest.raises(ValueError):
        parse_time("yesterday")
    rows: list[dict[str, Any]] = aggregate(records(10), "key")
    text = to_csv(rows, "key")
    assert text.splitlines()[0] == (
        "key,requests,prompt_tokens,completion_tokens,total_tokens,estimated_requests,audio_seconds"
    )
    assert len(text.splitlines()) == len(rows) + 1


def test_sqlite_writes_a_batch_larger_than_one_insert_whole(tmp_path: Path) -> None:
    # Rows go in several per INSERT (500 at most): a batch of 1,234 spans three statements,
    # the last one partial; every row must land, once.
    async def main() -> None:
        recs = records(1234, seed=7)
        store = await open_store(f"sqlite:///{tmp_path}/u.db")
        try:
            await store.write(recs, "big")
            for group in ("key", "pool", "user"):
                assert await store.query(group, None, None) == aggregate(recs, group, None, None)
        finally:
            await store.close()

    asyncio.run(main())
    conn = sqlite3.connect(tmp_path / "u.db")
    assert conn.execute("SELECT COUNT(*), COUNT(DISTINCT request_id) FROM usage").fetchone() == (1234, 1234)
    conn.close()


# The ledger schema before `audio_seconds` (as gateways up to issue #17 wrote it).
OLD_SCHEMA = """
CREATE TABLE usage (
    id INTEGER PRIMARY KEY, ts REAL NOT NULL, request_id TEXT, key TEXT, pool TEXT, model TEXT,
    backend TEXT, endpoint TEXT, prompt_tokens INTEGER NOT NULL DEFAULT 0,
    completion_tokens INTEGER NOT NULL DEFAULT 0, total_tokens INTEGER NOT NULL DEFAULT 0,
    status INTEGER, stream INTEGER, latency REAL, ttft REAL, user TEXT,
    estimated INTEGER NOT NULL DEFAULT 0, error TEXT
);
INSERT INTO usage (ts, key, pool, prompt_tokens, completion_tokens, total_tokens) VALUES (1767225600, 'old', 'chat', 3, 4, 7);
"""


def test_sqlite_ledger_from_before_audio_seconds_is_migrated_in_place(tmp_path: Path) -> None:
    path = tmp_path / "usage.db"
    with sqlite3.connect(path) as conn:
        conn.executescript(OLD_SCHEMA)

    async def go() -> list[dict[str, Any]]:
        store = await open_store(f"sqlite:///{path}")
        try:
            await store.write([UsageRecord(ts=T0 + 1, key="new", pool="asr", endpoint="transcriptions",
                                           audio_seconds=12)], batch_id="b1")
            return await store.query("key", None, None)
        finally:
            await store.close()

    rows = {r["key"]: r for r in asyncio.run(go())}
    assert rows["old"]["audio_seconds"] == 0 and rows["old"]["total_tokens"] == 7  # old rows kept, billed no audio
    assert rows["new"]["audio_seconds"] == 12
    # A second open finds nothing to add (and two gateways opening at once do not fail).
    from gateway.metering.store_sqlite import connect, migrate

    conn2 = connect(str(path))
    try:
        assert migrate(conn2) == []
    finally:
        conn2.close()
