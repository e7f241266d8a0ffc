"""Dynamic keys in the SQLite ledger file: tables `api_keys` and `api_keys_version`."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict
from typing import TypeVar

import orjson

from .record import KeyRecord

T = TypeVar("T")


class SqliteKeyStore:
    SCHEMA = """
    CREATE TABLE IF NOT EXISTS api_keys (name TEXT PRIMARY KEY, record TEXT NOT NULL);
    CREATE TABLE IF NOT EXISTS api_keys_version (id INTEGER PRIMARY KEY CHECK (id = 0), version INTEGER NOT NULL);
    INSERT OR IGNORE INTO api_keys_version VALUES (0, 0);
    """

    def __init__(self, path: str) -> None:
        from ..metering.store_sqlite import connect

        self.conn = connect(path)
        self.conn.executescript(self.SCHEMA)
        # One thread owns the connection, so transactions never interleave.
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="keystore-sqlite")

    @classmethod
    async def open(cls, path: str) -> SqliteKeyStore:
        return await asyncio.to_thread(cls, path)

    async def _run(self, fn: Callable[[], T]) -> T:
        return await asyncio.get_running_loop().run_in_executor(self._pool, fn)

    async def version(self) -> int:
        row = await self._run(lambda: self.conn.execute("SELECT version FROM api_keys_version").fetchone())
        return int(row[0])

    async def load(self) -> dict[str, KeyRecord]:
        rows = await self._run(lambda: self.conn.execute("SELECT name, record FROM api_keys").fetchall())
        return {n: KeyRecord(**orjson.loads(r)) for n, r in rows}

    def _write(self, sql: str, rec: KeyRecord) -> bool:
        c = self.conn
        c.execute("BEGIN IMMEDIATE")
        try:
            changed = c.execute(sql, (rec.name, orjson.dumps(asdict(rec)).decode())).rowcount
            c.execute("UPDATE api_keys_version SET version = version + 1")
            c.execute("COMMIT")
        except BaseException:
            c.execute("ROLLBACK")
            raise
        return changed > 0

    async def insert(self, rec: KeyRecord) -> bool:
        return await self._run(lambda: self._write("INSERT OR IGNORE INTO api_keys VALUES (?, ?)", rec))

    async def update(self, rec: KeyRecord) -> None:
        await self._run(lambda: self._write("INSERT OR REPLACE INTO api_keys VALUES (?, ?)", rec))

    async def close(self) -> None:
        await self._run(self.conn.close)
        self._pool.shutdown(wait=False)
