"""Which backend holds a stored object: Responses API ids -> the engine that stored them.

vLLM keeps a stored response in the memory of the one engine process that produced it, so
a follow-up naming it (`previous_response_id`) and `GET`/`cancel` by its id only work
there. The proxy records `id -> (pool, backend)` as a response passes through (from the
body's or the stream's first event's `id`, with a prefix check and one slice, never a
parse of the stream), and the pipeline pins such requests to that backend.

Bounded: at most `max_entries` ids (oldest dropped first) and each for `ttl` seconds.
Shared: with Redis configured (`redis:` or a Redis `store:`), ids of *endpoint* backends
are also written to `gw:resp:<id>` with the same TTL, so a follow-up that lands on another
replica finds the engine too. Spawned backends are never shared: each replica spawns its
own engines, and their ids (`pool-engine-N`) name different processes on every replica.

`lookup` answers None for an id never seen (or expired): the caller routes as usual and
the engine says whether it knows the id.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import redis.asyncio as aioredis

    from .backend import Backend

log = logging.getLogger("gateway.affinity")

PREFIX = "gw:resp:"
SEP = "\x1f"
DEFAULT_MAX_ENTRIES = 100_000  # ~200 bytes each: ~20 MB at most
DEFAULT_TTL_S = 24 * 3600.0
REDIS_TIMEOUT_S = 0.5  # a lookup waits no longer than this on Redis, then routes as usual


@dataclass(frozen=True, slots=True)
class Holder:
    """Where a stored object lives: a pool, and the id of the backend in it."""

    pool: str
    backend: str
    # The backend's restart count when the object was stored: a restarted engine lost it.
    restarts: int = 0


class ResponseAffinity:
    """id -> Holder, in process (an LRU with expiry) and, when given, in Redis.

    `record` never blocks: the Redis write is a task of its own. `lookup` waits on one
    Redis GET at most (bounded by REDIS_TIMEOUT_S), and only for ids this replica has
    not seen.
    """

    def __init__(
        self,
        max_entries: int = DEFAULT_MAX_ENTRIES,
        ttl: float = DEFAULT_TTL_S,
        redis: aioredis.Redis | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.max_entries = max_entries
        self.ttl = ttl
        self.redis = redis
        self._clock = clock
        self._ids: OrderedDict[str, tuple[Holder, float]] = OrderedDict()
        self._writes: set[asyncio.Task[None]] = set()

    def __len__(self) -> int:
        return len(self._ids)

    def record(self, oid: str, backend: Backend) -> None:
        holder = Holder(backend.pool, backend.id, backend.restarts)
        self._ids[oid] = (holder, self._clock() + self.ttl)
        self._ids.move_to_end(oid)
        while len(self._ids) > self.max_entries:
            self._ids.popitem(last=False)
        if self.redis is not None and backend.source == "endpoint":
            task = asyncio.get_running_loop().create_task(self._put(oid, holder))
            self._writes.add(task)
            task.add_done_callback(self._writes.discard)

    async def lookup(self, oid: str) -> Holder | None:
        hit = self._ids.get(oid)
        if hit is not None:
            if hit[1] > self._clock():
                return hit[0]
            del self._ids[oid]
        if self.redis is None:
            return None
        try:
            async with asyncio.timeout(REDIS_TIMEOUT_S):
                raw = await self.redis.get(PREFIX + oid)
        except Exception as e:  # Redis down or slow: route as if the id were unknown
            log.debug("affinity lookup of %s failed: %s", oid, e)
            return None
        if raw is None:
            return None
        pool, backend, restarts = (raw.decode().split(SEP) + ["", "0"])[:3]
        return Holder(pool, backend, int(restarts) if restarts.isdigit() else 0)

    async def _put(self, oid: str, holder: Holder) -> None:
        assert self.redis is not None
        try:
            value = SEP.join((holder.pool, holder.backend, str(holder.restarts)))
            await self.redis.set(PREFIX + oid, value, ex=max(1, int(self.ttl)))
        except Exception as e:  # the local entry still serves this replica
            log.debug("affinity write of %s failed: %s", oid, e)

    async def close(self) -> None:
        if self._writes:
            await asyncio.gather(*self._writes, return_exceptions=True)
        if self.redis is not None:
            await self.redis.aclose()
