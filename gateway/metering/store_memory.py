"""An in-process ledger for tests and `store: memory://` (lost on exit).

`fail` lets tests simulate a store that is down: while set, `write` raises.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from .query import aggregate, in_range
from .record import UsageRecord


class MemoryStore:
    def __init__(self) -> None:
        self.records: list[UsageRecord] = []
        self.batches: set[str] = set()
        self.writes = 0  # successful write calls, for batching tests
        self.fail: Exception | None = None

    async def write(self, records: Sequence[UsageRecord], batch_id: str) -> None:
        if self.fail is not None:
            raise self.fail
        if batch_id in self.batches:
            return
        self.batches.add(batch_id)
        self.records.extend(records)
        self.writes += 1

    async def query(self, group_by: str, since: float | None, until: float | None) -> list[dict[str, Any]]:
        return aggregate(self.records, group_by, since, until)

    async def spend(self, key: str, since: float | None) -> int:
        return sum(r.total_tokens for r in self.records if r.key == key and in_range(r.ts, since, None))

    async def close(self) -> None:
        pass
