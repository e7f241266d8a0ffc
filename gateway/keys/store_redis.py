"""Dynamic keys in Redis: HASH `gw:keys` and the counter `gw:keys:version`."""

from __future__ import annotations

from dataclasses import asdict

import orjson

from .record import KeyRecord


class RedisKeyStore:
    HASH = "gw:keys"
    VERSION = "gw:keys:version"

    def __init__(self, url: str) -> None:
        import redis.asyncio as aioredis
        from redis.asyncio.retry import Retry
        from redis.backoff import NoBackoff

        # One quick retry: a Redis that is down must not stall start-up or the poll loop.
        self.r = aioredis.Redis.from_url(
            url, socket_timeout=3.0, socket_connect_timeout=2.0, retry=Retry(NoBackoff(), 1)
        )

    async def version(self) -> int:
        return int(await self.r.get(self.VERSION) or 0)

    async def load(self) -> dict[str, KeyRecord]:
        raw = await self.r.hgetall(self.HASH)
        return {k.decode(): KeyRecord(**orjson.loads(v)) for k, v in raw.items()}

    async def insert(self, rec: KeyRecord) -> bool:
        async with self.r.pipeline(transaction=True) as p:
            p.hsetnx(self.HASH, rec.name, orjson.dumps(asdict(rec)))
            p.incr(self.VERSION)
            created, _ = await p.execute()
        return bool(created)

    async def update(self, rec: KeyRecord) -> None:
        async with self.r.pipeline(transaction=True) as p:
            p.hset(self.HASH, rec.name, orjson.dumps(asdict(rec)))
            p.incr(self.VERSION)
            await p.execute()

    async def close(self) -> None:
        await self.r.aclose()
