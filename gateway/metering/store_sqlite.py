"""The embedded ledger: one SQLite file in WAL mode.

`sqlite:///var/usage.db` is relative to the working directory, `sqlite:////abs/usage.db`
absolute; missing directories are created. sqlite3 blocks, so every call runs in a
worker thread: one thread owns the write connection (a batch is one transaction, so a
failed write leaves nothing behind and can simply be retried), another owns a read
connection, so an admin query never holds up a flush (WAL lets readers and the writer
run side by side).

Schema: table `usage`, one row per request (columns as `record.FIELDS`), indexed by
`ts` for time ranges and by (`key`, `ts`) for budget sums; (`pool`, `ts`) and (`user`,
`ts`) help per-pool and per-user reports.
"""

from __future__ import annotations

import asyncio
import functools
import itertools
import operator
import sqlite3
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, TypeVar

from .query import METRICS, check_group, day_label, hour_label, ordered
from .record import FIELDS, UsageRecord

T = TypeVar("T")

SCHEMA = """
CREATE TABLE IF NOT EXISTS usage (
    id INTEGER PRIMARY KEY,
    ts REAL NOT NULL,
    request_id TEXT,
    key TEXT,
    pool TEXT,
    model TEXT,
    backend TEXT,
    endpoint TEXT,
    prompt_tokens INTEGER NOT NULL DEFAULT 0,
    completion_tokens INTEGER NOT NULL DEFAULT 0,
    total_tokens INTEGER NOT NULL DEFAULT 0,
    status INTEGER,
    stream INTEGER,
    latency REAL,
    ttft REAL,
    user TEXT,
    estimated INTEGER NOT NULL DEFAULT 0,
    error TEXT,
    audio_seconds INTEGER NOT NULL DEFAULT 0
);
CREATE INDEX IF NOT EXISTS usage_ts ON usage (ts);
CREATE INDEX IF NOT EXISTS usage_key_ts ON usage (key, ts);
CREATE INDEX IF NOT EXISTS usage_pool_ts ON usage (pool, ts);
CREATE INDEX IF NOT EXISTS usage_user_ts ON usage (user, ts);
"""

_ROWS_PER_INSERT = 500  # at most; fewer when SQLite's bound-variable limit is lower (999 before 3.32)
_SUMS = "COUNT(*), SUM(prompt_tokens), SUM(completion_tokens), SUM(total_tokens), SUM(estimated), SUM(audio_seconds)"
# Columns added after the first release, with their definition: a ledger file written by an
# older gateway gets them on open (SQLite adds a column with a default in place, instantly).
MIGRATIONS = (("audio_seconds", "INTEGER NOT NULL DEFAULT 0"),)
# group -> SQL expression; a whitelist, so the name can be put into SQL safely.
_GROUP_SQL = {
    "key": "key",
    "pool": "pool",
    "user": "user",
    "model": "model",
    "hour": "CAST(ts / 3600 AS INTEGER)",
    "day": "CAST(ts / 86400 AS INTEGER)",
}


def connect(path: str) -> sqlite3.Connection:
    """A connection to the ledger file in WAL mode (creates directories and the schema)."""
    p = Path(path)
    if str(p) != ":memory:":
        p.parent.mkdir(parents=True, exist_ok=True)
    conn = sqlite3.connect(str(p), timeout=10.0, check_same_thread=False, isolation_level=None)
    conn.execute("PRAGMA journal_mode=WAL")
    # NORMAL under WAL survives a gateway crash; only an OS crash can lose the last commits.
    conn.execute("PRAGMA synchronous=NORMAL")
    conn.execute("PRAGMA busy_timeout=10000")
    return conn


class SqliteStore:
    def __init__(self, path: str, writer: sqlite3.Connection, reader: sqlite3.Connection) -> None:
        self.path = path
        self._w = writer
        self._r = reader
        self._per_insert = max(1, min(_ROWS_PER_INSERT, writer.getlimit(sqlite3.SQLITE_LIMIT_VARIABLE_NUMBER) // len(FIELDS)))
        self._wpool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="usage-sqlite-w")
        self._rpool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="usage-sqlite-r")

    @classmethod
    async def open(cls, path: str) -> SqliteStore:
        def _open() -> tuple[sqlite3.Connection, sqlite3.Connection]:
            w = connect(path)
            w.executescript(SCHEMA)
            migrate(w)
            return w, connect(path)

        w, r = await asyncio.to_thread(_open)
        return cls(path, w, r)

    async def _run(self, pool: ThreadPoolExecutor, fn: Callable[[], T]) -> T:
        return await asyncio.get_running_loop().run_in_executor(pool, fn)

    async def write(self, records: Sequence[UsageRecord], batch_id: str) -> None:
        rows = [_row(r) for r in records]
        per = self._per_insert

        def _insert() -> None:
            # One transaction per batch: all rows or none, so a retry cannot duplicate.
            # Several rows per INSERT: `executemany` steps once per row, and each step
            # hands the GIL back and forth with the event loop thread. A batch that fits
            # one INSERT needs no BEGIN/COMMIT (a statement is atomic): one step in all.
            if len(rows) <= per:
                self._w.execute(_insert_sql(len(rows)), list(itertools.chain.from_iterable(rows)))
                return
            with _transaction(self._w):
                for i in range(0, len(rows), per):
                    part = rows[i : i + per]
                    self._w.execute(_insert_sql(len(part)), list(itertools.chain.from_iterable(part)))

        await self._run(self._wpool, _insert)

    async def query(self, group_by: str, since: float | None, until: float | None) -> list[dict[str, Any]]:
        expr = _GROUP_SQL[check_group(group_by)]
        where, params = _range(since, until)
        sql = f"SELECT {expr} AS g, {_SUMS} FROM usage{where} GROUP BY g"
        raw = await self._run(self._rpool, lambda: self._r.execute(sql, params).fetchall())
        rows = []
        for g, *sums in raw:
            if group_by == "hour":
                g = hour_label(g * 3600)
            elif group_by == "day":
                g = day_label(g * 86400)
            rows.append({group_by: g, **{m: int(v or 0) for m, v in zip(METRICS, sums, strict=True)}})
        return ordered(rows, group_by)

    async def spend(self, key: str, since: float | None) -> int:
        where, params = _range(since, None)
        where = (where + " AND" if where else " WHERE") + " key = ?"
        sql = f"SELECT COALESCE(SUM(total_tokens), 0) FROM usage{where}"
        row = await self._run(self._rpool, lambda: self._r.execute(sql, [*params, key]).fetchone())
        return int(row[0])

    async def close(self) -> None:
        def _close() -> None:
            self._w.close()
            self._r.close()

        # Let queued writes finish first: the write pool runs tasks in order.
        await self._run(self._wpool, lambda: None)
        await asyncio.to_thread(_close)
        self._wpool.shutdown(wait=False)
        self._rpool.shutdown(wait=False)


def migrate(conn: sqlite3.Connection) -> list[str]:
    """Add the columns an older ledger lacks; returns their names."""
    have = {row[1] for row in conn.execute("PRAGMA table_info(usage)")}
    added = []
    for name, definition in MIGRATIONS:
        if name not in have:
            try:
                conn.execute(f"ALTER TABLE usage ADD COLUMN {name} {definition}")
            except sqlite3.OperationalError as e:  # another process opening the file won the race
                if "duplicate column" not in str(e):
                    raise
                continue
            added.append(name)
    return added


class _transaction:
    def __init__(self, conn: sqlite3.Connection) -> None:
        self.conn = conn

    def __enter__(self) -> None:
        self.conn.execute("BEGIN IMMEDIATE")

    def __exit__(self, exc_type: object, exc: object, tb: object) -> None:
        self.conn.execute("COMMIT" if exc_type is None else "ROLLBACK")


def _range(since: float | None, until: float | None) -> tuple[str, list[float]]:
    clauses, params = [], []
    if since is not None:
        clauses.append("ts >= ?")
        params.append(since)
    if until is not None:
        clauses.append("ts < ?")
        params.append(until)
    return (" WHERE " + " AND ".join(clauses) if clauses else ""), params


@functools.lru_cache(maxsize=8)
def _insert_sql(n: int) -> str:
    """An INSERT of `n` rows."""
    one = f"({', '.join('?' * len(FIELDS))})"
    return f"INSERT INTO usage ({', '.join(FIELDS)}) VALUES {', '.join([one] * n)}"


# One C call per record (a generator per field was ~4x the cost, on the gateway's core).
# sqlite3 stores the bool fields (stream, estimated) as the integers 1 and 0 by itself.
_row: Callable[[UsageRecord], tuple[Any, ...]] = operator.attrgetter(*FIELDS)
