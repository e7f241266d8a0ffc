"""Per-key rate limits (requests/min, tokens/min, concurrent requests) and token budgets.

Guarantee: `rpm: N` admits at most N requests in ANY rolling 60 s window, counted
across all replicas sharing a Redis. Algorithm: a sliding log per key (each admission's
time; see local_counters.py), not a token bucket, so there is no burst-then-refill: a
user reading `rpm: 60` gets at most 60 in any minute. `x-ratelimit-reset-*` is the time
until the window is empty again (OpenAI: "until the limit resets to its initial state").

Token limits (`tpm`) log each request's estimate at admission (prompt + requested max
tokens, capped; cheap: characters / 4) and re-log its real count when it finishes. A
request is admitted only if the tokens logged in the last 60 s plus its estimate fit;
a finished request's tokens count until 60 s after it finished. Budgets (total tokens
per month/week/day, or lifetime) are checked at admission against what was spent so far
and charged at settle, so a few requests in flight can overshoot a budget slightly; they
never start once it is spent.

Two counter stores with the same semantics:
- in-process (one gateway): plain dicts and deques; asyncio runs one admission at a time.
- Redis (`cfg.redis_url`): one Lua script per admission decides all dimensions at once
  with Redis' clock, so N replicas enforce one global limit. Concurrency slots are
  leases in a ZSET, refreshed while requests run, so a crashed replica's slots expire.

Redis slow or unreachable (limiter.py): limits are never switched off. An admission that
waits longer than `redis_counters.TIMEOUT_S`, or fails, is decided by this replica alone
against its share of each limit (limit // live replicas, counted by heartbeats; the last
known count while Redis is down), counting its own admissions of the last minute; for a
second after a failure every admission is decided that way without waiting on Redis.
Each such decision is counted (`gateway_ratelimit_degraded_total{reason}`), and the
local admissions are logged in Redis at the next heartbeat or admission once it answers.

Keys with no limits and no budget never touch either counter store (shared no-op admission).
"""

from __future__ import annotations

from .budget import Budget, parse_budget
from .limiter import NOOP, Admission, Limiter, RateLimited, format_duration

__all__ = ["NOOP", "Admission", "Budget", "Limiter", "RateLimited", "format_duration", "parse_budget"]
