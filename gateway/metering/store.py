"""The usage ledger's storage interface and the `store:` URL that picks one.

A store only persists and aggregates; buffering, batching and retrying belong to the
writer. `write` raises on any failure and must then have written nothing (SQLite: one
transaction) or be safe to repeat with the same `batch_id` (Redis: a batch marker), so
the writer can retry a failed batch without counting it twice.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Protocol

from .record import UsageRecord


class Store(Protocol):
    async def write(self, records: Sequence[UsageRecord], batch_id: str) -> None: ...

    async def query(
        self, group_by: str, since: float | None, until: float | None
    ) -> list[dict[str, Any]]: ...

    async def spend(self, key: str, since: float | None) -> int:
        """Total tokens of `key` since `since` (None: ever); seeds budget counters."""
        ...

    async def close(self) -> None: ...


async def open_store(url: str) -> Store:
    """Open the store named by a `store:` URL (sqlite:///path, redis://host:port/db, memory://)."""
    if url == "memory://":
        from .store_memory import MemoryStore

        return MemoryStore()
    if url.startswith("sqlite:///"):
        from .store_sqlite import SqliteStore

        return await SqliteStore.open(url[len("sqlite:///") :])
    if url.startswith(("redis://", "rediss://")):
        from .store_redis import RedisStore

        return await RedisStore.open(url)
    raise ValueError(f"unknown store URL {url!r}")
