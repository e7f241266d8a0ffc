"""Token budgets: `5000000/month`, `100000/day`, `2000000/week`, or a lifetime total."""

from __future__ import annotations

import functools
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta


@dataclass(frozen=True)
class Budget:
    limit: int  # total tokens
    period: str  # month | week | day | lifetime

    def window(self, now: float) -> tuple[str, float | None, float | None]:
        """(period id, start, end) in unix seconds for the period containing `now` (UTC)."""
        if self.period == "lifetime":
            return "all", None, None
        d = datetime.fromtimestamp(now, UTC).replace(hour=0, minute=0, second=0, microsecond=0)
        if self.period == "day":
            start, end = d, d + timedelta(days=1)
        elif self.period == "week":
            start = d - timedelta(days=d.weekday())
            end = start + timedelta(days=7)
        else:
            start = d.replace(day=1)
            end = (start + timedelta(days=32)).replace(day=1)
        return f"{self.period[0]}{start:%Y-%m-%d}", start.timestamp(), end.timestamp()


@functools.lru_cache(maxsize=1024)
def parse_budget(text: str) -> Budget:
    """`5000000/month`, `100000/day`, `2000000/week`, or a plain integer (lifetime)."""
    amount, _, period = text.strip().partition("/")
    period = period.strip().lower() or "lifetime"
    if period not in ("month", "week", "day", "lifetime"):
        raise ValueError(f"budget period must be month, week or day, not {period!r}")
    try:
        limit = int(amount.strip().replace("_", ""))
    except ValueError:
        raise ValueError(f"budget {text!r} is not N, N/month, N/week or N/day") from None
    if limit < 0:
        raise ValueError("a budget cannot be negative")
    return Budget(limit, period)
