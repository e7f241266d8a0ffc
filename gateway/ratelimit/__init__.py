"""Per-key rate limits (requests/min, tokens/min, concurrent requests) and token budgets.

Algorithm: GCRA (a token bucket that stores one number, the "theoretical arrival time")
per key and dimension. A bucket holds one minute's allowance and refills continuously,
which is what OpenAI's headers describe: `x-ratelimit-reset-*` is the time until the
bucket is full again. RPM=60 admits 60 requests at once, then one per second.

Token limits charge an estimate at admission (prompt + requested max tokens, capped;
cheap: characters / 4) and `settle` moves the bucket by the difference to the real
usage. Budgets (total tokens per month/week/day, or lifetime) are checked at admission
against what was spent so far and charged at settle, so a few requests in flight can
overshoot a budget slightly; they never start once it is spent.

Two counter stores with the same arithmetic:
- in-process (one gateway): plain dicts; asyncio runs one admission at a time.
- Redis (`cfg.redis_url`): one Lua script per admission decides all dimensions at once
  with Redis' clock, so N replicas enforce one global limit. Concurrency slots are
  leases in a ZSET, refreshed while requests run, so a crashed replica's slots expire.
  If Redis fails, admissions fail open (logged) for a second before trying again:
  losing Redis must not take the gateway down.

Keys with no limits and no budget never touch either counter store (shared no-op admission).
"""

from __future__ import annotations

from .budget import Budget, parse_budget
from .limiter import NOOP, Admission, Limiter, RateLimited, format_duration

__all__ = ["NOOP", "Admission", "Budget", "Limiter", "RateLimited", "format_duration", "parse_budget"]
