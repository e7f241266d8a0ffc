"""GCRA arithmetic and the in-process counters (one gateway)."""

from __future__ import annotations

import time
from dataclasses import dataclass

WINDOW_S = 60.0


@dataclass
class Verdict:
    ok: bool
    reason: str = ""  # rpm | tpm | concurrent | budget
    retry_after: float = 0.0
    rpm_remaining: int = 0
    rpm_reset: float = 0.0
    tpm_remaining: int = 0
    tpm_reset: float = 0.0


@dataclass
class Request:
    """One admission as the counter stores see it (0 / -1 mean 'no limit')."""

    name: str
    rpm: int
    tpm: int
    cost: int
    max_concurrent: int
    lease: str
    budget: int  # -1: no budget
    budget_key: str
    budget_ttl: int


def _gcra(tat: float, now: float, limit: int, cost: float) -> tuple[bool, float, int, float]:
    """(allowed, new tat or retry-after, remaining, reset) for one bucket, all in seconds."""
    interval = WINDOW_S / limit
    tat = max(tat, now)
    new = tat + cost * interval
    if new - now > WINDOW_S + 1e-9:
        return False, new - WINDOW_S - now, int((WINDOW_S - (tat - now)) / interval + 1e-9), tat - now
    return True, new, int((WINDOW_S - (new - now)) / interval + 1e-9), new - now


class LocalCounters:
    """In-process state; asyncio runs each admission to completion, so no locks are needed."""

    def __init__(self) -> None:
        self.tat: dict[tuple[str, str], float] = {}
        self.inflight: dict[str, int] = {}
        self.spent: dict[tuple[str, str], int] = {}

    async def admit(self, r: Request) -> Verdict:
        now = time.monotonic()
        if r.budget >= 0 and self.spent.get((r.name, r.budget_key), 0) >= r.budget:
            return Verdict(False, "budget")
        if r.max_concurrent > 0 and self.inflight.get(r.name, 0) >= r.max_concurrent:
            return Verdict(False, "concurrent", 1.0)
        v = Verdict(True)
        updates = []
        for dim, limit, cost in (("rpm", r.rpm, 1), ("tpm", r.tpm, r.cost)):
            if limit <= 0:
                continue
            ok, x, remaining, reset = _gcra(self.tat.get((r.name, dim), 0.0), now, limit, cost)
            setattr(v, f"{dim}_remaining", remaining)
            setattr(v, f"{dim}_reset", reset)
            if not ok:
                v.ok, v.reason, v.retry_after = False, dim, max(v.retry_after, x)
            else:
                updates.append(((r.name, dim), x))
        if v.ok:
            self.tat.update(updates)
            if r.max_concurrent > 0:
                self.inflight[r.name] = self.inflight.get(r.name, 0) + 1
        return v

    async def settle(self, r: Request, delta: int, used: int, lease: bool) -> None:
        if r.tpm > 0 and delta:
            now = time.monotonic()
            k = (r.name, "tpm")
            self.tat[k] = max(now, max(self.tat.get(k, 0.0), now) + delta * WINDOW_S / r.tpm)
        if lease and r.max_concurrent > 0:
            self.inflight[r.name] = max(0, self.inflight.get(r.name, 0) - 1)
        if r.budget >= 0 and used:
            bk = (r.name, r.budget_key)
            self.spent[bk] = self.spent.get(bk, 0) + used

    async def seed_budget(self, name: str, period: str, spent: int, ttl: int) -> None:
        self.spent.setdefault((name, period), spent)

    async def close(self) -> None:
        pass
