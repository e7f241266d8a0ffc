"""Sliding-log arithmetic and the in-process counters (one gateway, or a replica's fallback).

The guarantee (the same in redis_counters.py's Lua, which mirrors this file):
- rpm: at most `rpm` admissions in any rolling 60 s window. Each admission is logged
  with its time; one is admitted only if fewer than `rpm` are logged in the last 60 s.
- tpm: a request is admitted only if the tokens of every request logged in the last
  60 s, plus its own estimate, fit in `tpm`. A request is logged at admission with its
  estimate and re-logged when it finishes with its real count, at that time; so its
  tokens count from its admission until 60 s after it finished.
"""

from __future__ import annotations

import time
from collections import OrderedDict, deque
from dataclasses import dataclass, field

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
    lease: str  # unique per admission: the log entry's id and the concurrency slot's
    budget: int  # -1: no budget
    budget_key: str
    budget_ttl: int


@dataclass
class RequestLog:
    """Admission times of one key, oldest first."""

    times: deque[float] = field(default_factory=deque)

    def trim(self, now: float) -> None:
        t = self.times
        while t and t[0] <= now - WINDOW_S:
            t.popleft()

    def check(self, now: float, limit: int) -> tuple[bool, float, int, float]:
        """(admit?, retry-after, remaining after admitting, reset) for one more request."""
        self.trim(now)
        n = len(self.times)
        if n >= limit:
            # The (n - limit + 1)-th oldest must leave before one more fits.
            return False, self.times[n - limit] + WINDOW_S - now, 0, self.times[-1] + WINDOW_S - now
        return True, 0.0, limit - n - 1, WINDOW_S


@dataclass
class TokenLog:
    """Token entries of one key by request id, oldest first, and their sum."""

    entries: OrderedDict[str, tuple[float, int]] = field(default_factory=OrderedDict)
    total: int = 0

    def trim(self, now: float) -> None:
        e = self.entries
        while e:
            rid, (ts, tokens) = next(iter(e.items()))
            if ts > now - WINDOW_S:
                break
            del e[rid]
            self.total -= tokens

    def check(self, now: float, limit: int, cost: int) -> tuple[bool, float, int, float]:
        self.trim(now)
        if self.total + cost <= limit:
            return True, 0.0, limit - self.total - cost, WINDOW_S
        reset = next(reversed(self.entries.values()))[0] + WINDOW_S - now if self.entries else 0.0
        # Wait until enough of the oldest entries have left the window.
        need, freed = self.total + cost - limit, 0
        for ts, tokens in self.entries.values():
            freed += tokens
            if freed >= need:
                return False, ts + WINDOW_S - now, max(0, limit - self.total), reset
        return False, WINDOW_S, max(0, limit - self.total), reset

    def put(self, rid: str, now: float, tokens: int) -> None:
        """Log (or re-log at `now`) request `rid` with `tokens`."""
        old = self.entries.pop(rid, None)
        if old is not None:
            self.total -= old[1]
        self.entries[rid] = (now, tokens)
        self.total += tokens


class LocalCounters:
    """In-process state; asyncio runs each admission to completion, so no locks are needed."""

    def __init__(self) -> None:
        self.requests: dict[str, RequestLog] = {}
        self.tokens: dict[str, TokenLog] = {}
        self.inflight: dict[str, int] = {}
        self.spent: dict[tuple[str, str], int] = {}

    async def admit(self, r: Request) -> Verdict:
        return self.admit_now(r)

    def admit_now(self, r: Request) -> Verdict:
        now = time.monotonic()
        if r.budget >= 0 and self.spent.get((r.name, r.budget_key), 0) >= r.budget:
            return Verdict(False, "budget")
        if r.max_concurrent > 0 and self.inflight.get(r.name, 0) >= r.max_concurrent:
            return Verdict(False, "concurrent", 1.0)
        v = Verdict(True)
        if r.rpm > 0:
            ok, retry, v.rpm_remaining, v.rpm_reset = self._rlog(r.name).check(now, r.rpm)
            if not ok:
                v.ok, v.reason, v.retry_after = False, "rpm", retry
        if r.tpm > 0:
            ok, retry, v.tpm_remaining, v.tpm_reset = self._tlog(r.name).check(now, r.tpm, r.cost)
            if not ok:
                v.ok, v.reason, v.retry_after = False, v.reason or "tpm", max(v.retry_after, retry)
        if v.ok:
            self.record(r, now)
        return v

    def record(self, r: Request, now: float | None = None) -> None:
        """Log an admission decided elsewhere (the Redis store), without checking it."""
        now = time.monotonic() if now is None else now
        if r.rpm > 0:
            self._rlog(r.name).times.append(now)
        if r.tpm > 0:
            self._tlog(r.name).put(r.lease, now, r.cost)
        if r.max_concurrent > 0:
            self.inflight[r.name] = self.inflight.get(r.name, 0) + 1

    def _rlog(self, name: str) -> RequestLog:
        log = self.requests.get(name)
        if log is None:
            log = self.requests[name] = RequestLog()
        return log

    def _tlog(self, name: str) -> TokenLog:
        log = self.tokens.get(name)
        if log is None:
            log = self.tokens[name] = TokenLog()
        return log

    async def settle(self, r: Request, used: int, lease: bool) -> None:
        self.settle_now(r, used, lease)

    def settle_now(self, r: Request, used: int, lease: bool) -> None:
        if r.tpm > 0:
            self._tlog(r.name).put(r.lease, time.monotonic(), used)
        if lease and r.max_concurrent > 0:
            self.inflight[r.name] = max(0, self.inflight.get(r.name, 0) - 1)
        if r.budget >= 0 and used:
            bk = (r.name, r.budget_key)
            self.spent[bk] = self.spent.get(bk, 0) + used

    async def seed_budget(self, name: str, period: str, spent: int, ttl: int) -> None:
        self.spent.setdefault((name, period), spent)

    async def close(self) -> None:
        pass
