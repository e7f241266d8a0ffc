"""Dynamic keys in a dict (memory:// stores: tests, single replica; lost on exit)."""

from __future__ import annotations

from dataclasses import asdict

from .record import KeyRecord


class MemoryKeyStore:
    def __init__(self) -> None:
        self.records: dict[str, KeyRecord] = {}
        self.ver = 0

    async def version(self) -> int:
        return self.ver

    async def load(self) -> dict[str, KeyRecord]:
        return {n: KeyRecord(**asdict(r)) for n, r in self.records.items()}

    async def insert(self, rec: KeyRecord) -> bool:
        if rec.name in self.records:
            return False
        await self.update(rec)
        return True

    async def update(self, rec: KeyRecord) -> None:
        self.records[rec.name] = KeyRecord(**asdict(rec))
        self.ver += 1

    async def close(self) -> None:
        pass
