"""Conversation -> backend records shared by gateway replicas through Redis.

A replica's prefix index knows only what IT sent. Behind a load balancer that spreads
requests over several gateways, a conversation's next turn often reaches a replica that
never saw the earlier ones, which then cannot tell where the prefix is cached (issue #15
measured 7.8-9.3% of the hit rate lost to a second replica). Every dispatch therefore
records, in Redis, which backend got the conversation and how many prompt blocks it
was sent; a replica routing a follow-up turn reads that record first.

Cost and bounds:
- Writes are off the request path: a background task per dispatch (SET with EX), at
  most `MAX_PENDING_WRITES` at once; beyond that a write is dropped (counted), never
  waited for. One key per conversation, ~60 bytes, expiring after `ttl`.
- Reads are on the request path only for follow-up turns (a first turn has no record
  by construction), through a local read-through cache of `local_ttl` seconds, and wait
  at most `timeout`: Redis slow or down costs locality, never latency beyond that.
- The local cache holds at most `MAX_LOCAL` conversations (oldest out first).

The Redis client is the rate limiter's (same `redis_url`, same bounded pool and
timeouts): one connection pool per replica.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from redis.asyncio import Redis

log = logging.getLogger("gateway.routing.shared_routes")

MAX_LOCAL = 65536
MAX_PENDING_WRITES = 256


@dataclass(frozen=True, slots=True)
class SharedRoute:
    url: str  # the backend's base URL (the same on every replica, unlike its id)
    blocks: int  # prompt blocks it was sent: its cached prefix, unless evicted since
    at: float  # monotonic time this replica learnt it


@dataclass
class SharedRouteStats:
    reads: int = 0  # Redis GETs issued
    found: int = 0  # of those, a record was there
    failed: int = 0  # reads or writes that timed out or errored
    writes: int = 0
    dropped: int = 0  # writes not issued: too many pending


class SharedRoutes:
    """The records of one pool. Without a client (no `redis_url`) every call is local only."""

    def __init__(
        self, pool: str, ttl: float, local_ttl: float = 1.0, timeout: float = 0.05,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.pool = pool
        self.clock = clock
        self.ttl = ttl
        self.local_ttl = local_ttl
        self.timeout = timeout
        self.client: Redis | None = None
        self.stats = SharedRouteStats()
        self._local: OrderedDict[int, SharedRoute] = OrderedDict()
        self._writes: set[asyncio.Task[None]] = set()

    def attach(self, client: Redis | None) -> None:
        self.client = client

    def _key(self, conversation: int) -> str:
        # One hash tag per pool: a Redis Cluster keeps a pool's records in one slot.
        return f"gw:route:{{{self.pool}}}:{conversation:016x}"

    def peek(self, conversation: int) -> SharedRoute | None:
        """The record as last learnt here, if fresh (no I/O)."""
        r = self._local.get(conversation)
        if r is None or self.clock() - r.at > (self.local_ttl if self.client is not None else self.ttl):
            return None
        return r

    def _remember(self, conversation: int, route: SharedRoute) -> None:
        self._local[conversation] = route
        self._local.move_to_end(conversation)
        while len(self._local) > MAX_LOCAL:
            self._local.popitem(last=False)

    async def fetch(self, conversation: int) -> SharedRoute | None:
        """The shared record (read through the local cache; None if there is none, or Redis
        did not answer within `timeout`)."""
        r = self.peek(conversation)
        if r is not None or self.client is None:
            return r
        self.stats.reads += 1
        try:
            raw: Any = await asyncio.wait_for(self.client.get(self._key(conversation)), self.timeout)
        except Exception as e:  # timeout, connection refused, ...: route without it
            self.stats.failed += 1
            log.debug("shared route read failed: %r", e)
            return None
        if raw is None:
            return None
        try:
            blocks, url = (raw.decode() if isinstance(raw, bytes) else str(raw)).split(" ", 1)
            r = SharedRoute(url, int(blocks), self.clock())
        except ValueError:
            return None
        self.stats.found += 1
        self._remember(conversation, r)
        return r

    def record(self, conversation: int, url: str, blocks: int) -> None:
        """This replica sent the conversation to `url` with `blocks` prompt blocks."""
        self._remember(conversation, SharedRoute(url, blocks, self.clock()))
        if self.client is None:
            return
        if len(self._writes) >= MAX_PENDING_WRITES:
            self.stats.dropped += 1
            return
        task = asyncio.get_running_loop().create_task(self._write(self._key(conversation), f"{blocks} {url}"))
        self._writes.add(task)
        task.add_done_callback(self._writes.discard)

    async def _write(self, key: str, value: str) -> None:
        assert self.client is not None
        self.stats.writes += 1
        try:
            await asyncio.wait_for(self.client.set(key, value, ex=max(1, int(self.ttl))), max(self.timeout, 1.0))
        except Exception as e:
            self.stats.failed += 1
            log.debug("shared route write failed: %r", e)

    async def close(self) -> None:
        for t in list(self._writes):
            t.cancel()
        await asyncio.gather(*self._writes, return_exceptions=True)
