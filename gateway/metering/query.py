"""Usage aggregations shared by the stores: group names, time parsing, row shape, CSV.

A row is `{<group>: value, "requests", "prompt_tokens", "completion_tokens",
"total_tokens", "estimated_requests", "audio_seconds"}` (audio: transcriptions, billed seconds). Time groups are UTC: `hour` values look like
`2026-05-04T13:00:00Z`, `day` values `2026-05-04`.
"""

from __future__ import annotations

import csv
import io
import re
import time
from collections.abc import Iterable
from datetime import UTC, datetime
from typing import Any

from .record import UsageRecord

GROUPS = ("key", "pool", "user", "model", "hour", "day")
METRICS = ("requests", "prompt_tokens", "completion_tokens", "total_tokens", "estimated_requests", "audio_seconds")

_REL = re.compile(r"^(\d+(?:\.\d+)?)\s*([smhdw])$")
_UNIT = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}


def parse_time(text: str | None, now: float | None = None) -> float | None:
    """`24h` / `30m` / `7d` (ago), unix seconds, or ISO 8601 (UTC when no zone) -> unix time."""
    if text is None or text.strip() == "":
        return None
    t = text.strip()
    m = _REL.match(t)
    if m:
        return (time.time() if now is None else now) - float(m.group(1)) * _UNIT[m.group(2)]
    try:
        return float(t)
    except ValueError:
        pass
    try:
        dt = datetime.fromisoformat(t.replace("Z", "+00:00"))
    except ValueError:
        raise ValueError(f"{text!r} is not a time: use 24h, 7d, unix seconds or ISO 8601") from None
    if dt.tzinfo is None:
        dt = dt.replace(tzinfo=UTC)
    return dt.timestamp()


def hour_label(ts: float) -> str:
    return datetime.fromtimestamp(ts - ts % 3600, UTC).strftime("%Y-%m-%dT%H:00:00Z")


def day_label(ts: float) -> str:
    return datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%d")


def group_value(rec: UsageRecord, group_by: str) -> Any:
    if group_by == "hour":
        return hour_label(rec.ts)
    if group_by == "day":
        return day_label(rec.ts)
    return getattr(rec, group_by)


def check_group(group_by: str) -> str:
    if group_by not in GROUPS:
        raise ValueError(f"group_by must be one of {', '.join(GROUPS)}")
    return group_by


def in_range(ts: float, since: float | None, until: float | None) -> bool:
    return (since is None or ts >= since) and (until is None or ts < until)


def empty_row(group_by: str, value: Any) -> dict[str, Any]:
    return {group_by: value, **dict.fromkeys(METRICS, 0)}


def add_record(row: dict[str, Any], rec: UsageRecord) -> None:
    row["requests"] += 1
    row["prompt_tokens"] += rec.prompt_tokens
    row["completion_tokens"] += rec.completion_tokens
    row["total_tokens"] += rec.total_tokens
    row["estimated_requests"] += 1 if rec.estimated else 0
    row["audio_seconds"] += rec.audio_seconds


def merge_row(into: dict[str, Any], row: dict[str, Any]) -> None:
    for m in METRICS:
        into[m] += int(row.get(m, 0))


def aggregate(
    records: Iterable[UsageRecord], group_by: str, since: float | None = None, until: float | None = None
) -> list[dict[str, Any]]:
    rows: dict[Any, dict[str, Any]] = {}
    for rec in records:
        if not in_range(rec.ts, since, until):
            continue
        v = group_value(rec, group_by)
        row = rows.get(v)
        if row is None:
            row = rows[v] = empty_row(group_by, v)
        add_record(row, rec)
    return ordered(list(rows.values()), group_by)


def ordered(rows: list[dict[str, Any]], group_by: str) -> list[dict[str, Any]]:
    """Time groups in time order; others by total tokens, largest first."""
    if group_by in ("hour", "day"):
        return sorted(rows, key=lambda r: r[group_by])
    return sorted(rows, key=lambda r: (-r["total_tokens"], str(r[group_by])))


def to_csv(rows: list[dict[str, Any]], group_by: str) -> str:
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow([group_by, *METRICS])
    for r in rows:
        v = r.get(group_by)
        w.writerow(["" if v is None else v, *(r.get(m, 0) for m in METRICS)])
    return buf.getvalue()
