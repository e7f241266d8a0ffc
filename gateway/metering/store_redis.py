"""The shared ledger for several replicas: records and hourly aggregates in Redis.

Layout (prefix `gw:usage:`; standalone Redis, not Cluster):
- `r:<hour>`  LIST of JSON records whose request started in that UTC hour
              (`<hour>` = unix seconds of the hour's start). The durable ledger.
- `a:<hour>`  HASH of running sums for that hour: field `<dim>\\x1f<value>\\x1f<metric>`,
              dim in key|pool|user|model|all (value "" for all; "\\x00" for None),
              metric in requests|prompt_tokens|completion_tokens|total_tokens|estimated_requests|
              audio_seconds (written only when non-zero; a missing field reads as 0).
- `hours`     ZSET of hours that have data (score = member = hour).
- `batch:<id>` marker (7 days) that makes a retried batch a no-op.

A batch is written by one Lua script (marker check, RPUSH, HINCRBY, ZADD), so it lands
whole or not at all, and a retry after a timeout whose write did land counts nothing
twice. Queries sum whole hours from the hashes (a handful of HGETALLs for a day) and
read only the partial hours at the edges of a range record by record.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from typing import Any

import orjson
import redis.asyncio as aioredis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff

from .query import METRICS, aggregate, check_group, day_label, hour_label, merge_row, ordered
from .record import UsageRecord

PREFIX = "gw:usage:"
BATCH_TTL_S = 7 * 86400
SEP = "\x1f"
NONE = "\x00"
_DIMS = ("key", "pool", "user", "model")
_CHUNK = 1000  # RPUSH arguments per call (Lua's unpack has a stack limit)

_WRITE = """
if redis.call('SET', KEYS[1], '1', 'NX', 'EX', ARGV[1]) == false then return 0 end
local p = KEYS[2]
local b = cjson.decode(ARGV[2])
for hour, recs in pairs(b.lists) do
  for i = 1, #recs, CHUNK do
    redis.call('RPUSH', p .. 'r:' .. hour, unpack(recs, i, math.min(i + CHUNK - 1, #recs)))
  end
  redis.call('ZADD', p .. 'hours', tonumber(hour), hour)
end
for hour, fields in pairs(b.aggs) do
  for f, n in pairs(fields) do redis.call('HINCRBY', p .. 'a:' .. hour, f, n) end
end
return 1
""".replace("CHUNK", str(_CHUNK))


def _hour(ts: float) -> int:
    return int(ts // 3600) * 3600


def _val(v: Any) -> str:
    return NONE if v is None else str(v)


def connect(url: str) -> aioredis.Redis:
    # Short timeouts: a hung Redis must fail a flush quickly so the writer can retry,
    # never hold it for minutes.
    # The writer retries failed batches itself; the client only retries once, at once.
    return aioredis.Redis.from_url(
        url, socket_timeout=3.0, socket_connect_timeout=2.0, retry=Retry(NoBackoff(), 1)
    )


class RedisStore:
    def __init__(self, client: aioredis.Redis) -> None:
        self.r = client
        self._write = client.register_script(_WRITE)

    @classmethod
    async def open(cls, url: str) -> RedisStore:
        # No PING here: a Redis that is down at start-up must not stop the gateway;
        # the writer buffers until it answers.
        return cls(connect(url))

    async def write(self, records: Sequence[UsageRecord], batch_id: str) -> None:
        lists: dict[str, list[str]] = defaultdict(list)
        aggs: dict[str, dict[str, int]] = defaultdict(lambda: defaultdict(int))
        for rec in records:
            h = str(_hour(rec.ts))
            lists[h].append(orjson.dumps(rec.to_dict()).decode())
            fields = aggs[h]
            for dim in (*_DIMS, "all"):
                value = "" if dim == "all" else _val(getattr(rec, dim))
                base = f"{dim}{SEP}{value}{SEP}"
                fields[base + "requests"] += 1
                fields[base + "prompt_tokens"] += rec.prompt_tokens
                fields[base + "completion_tokens"] += rec.completion_tokens
                fields[base + "total_tokens"] += rec.total_tokens
                fields[base + "estimated_requests"] += 1 if rec.estimated else 0
                if rec.audio_seconds:  # most records have none: keep the hash small
                    fields[base + "audio_seconds"] += rec.audio_seconds
        payload = orjson.dumps({"lists": lists, "aggs": aggs})
        await self._write(keys=[f"{PREFIX}batch:{batch_id}", PREFIX], args=[BATCH_TTL_S, payload])

    async def _hours(self, since: float | None, until: float | None) -> list[int]:
        lo = "-inf" if since is None else _hour(since)
        hi = "+inf" if until is None else f"({until}"
        return [int(h) for h in await self.r.zrangebyscore(PREFIX + "hours", lo, hi)]

    @staticmethod
    def _whole(h: int, since: float | None, until: float | None) -> bool:
        return (since is None or since <= h) and (until is None or h + 3600 <= until)

    async def _records(self, hours: list[int]) -> list[UsageRecord]:
        if not hours:
            return []
        async with self.r.pipeline(transaction=False) as pipe:
            for h in hours:
                pipe.lrange(f"{PREFIX}r:{h}", 0, -1)
            lists = await pipe.execute()
        return [UsageRecord.from_dict(orjson.loads(raw)) for items in lists for raw in items]

    async def query(self, group_by: str, since: float | None, until: float | None) -> list[dict[str, Any]]:
        check_group(group_by)
        hours = await self._hours(since, until)
        whole = [h for h in hours if self._whole(h, since, until)]
        edges = [h for h in hours if not self._whole(h, since, until)]
        rows: dict[Any, dict[str, Any]] = {}
        if whole:
            async with self.r.pipeline(transaction=False) as pipe:
                for h in whole:
                    pipe.hgetall(f"{PREFIX}a:{h}")
                hashes = await pipe.execute()
            dim = "all" if group_by in ("hour", "day") else group_by
            for h, fields in zip(whole, hashes, strict=True):
                for raw_field, raw_n in fields.items():
                    d, value, metric = raw_field.decode().split(SEP)
                    if d != dim or metric not in METRICS:
                        continue
                    g: Any
                    if group_by == "hour":
                        g = hour_label(h)
                    elif group_by == "day":
                        g = day_label(h)
                    else:
                        g = None if value == NONE else value
                    row = rows.setdefault(g, {group_by: g, **dict.fromkeys(METRICS, 0)})
                    row[metric] += int(raw_n)
        for part in aggregate(await self._records(edges), group_by, since, until):
            g = part[group_by]
            if g in rows:
                merge_row(rows[g], part)
            else:
                rows[g] = part
        return ordered(list(rows.values()), group_by)

    async def spend(self, key: str, since: float | None) -> int:
        hours = await self._hours(since, None)
        whole = [h for h in hours if self._whole(h, since, None)]
        edges = [h for h in hours if not self._whole(h, since, None)]
        total = 0
        if whole:
            field = f"key{SEP}{key}{SEP}total_tokens"
            async with self.r.pipeline(transaction=False) as pipe:
                for h in whole:
                    pipe.hget(f"{PREFIX}a:{h}", field)
                total += sum(int(v) for v in await pipe.execute() if v is not None)
        for rec in await self._records(edges):
            if rec.key == key and (since is None or rec.ts >= since):
                total += rec.total_tokens
        return total

    async def close(self) -> None:
        await self.r.aclose()
