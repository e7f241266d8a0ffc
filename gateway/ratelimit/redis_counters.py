"""The Redis counters: one Lua script per admission, so N replicas enforce one limit.

The scripts mirror local_counters.py's sliding logs (read that file for the guarantee),
with Redis' clock, so replicas need no clock agreement.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import time
import uuid
from collections import deque

from .local_counters import WINDOW_S, Request, Verdict

log = logging.getLogger("gateway.ratelimit")

LEASE_TTL_S = 120.0  # a concurrency slot not refreshed for this long is freed
LEASE_REFRESH_S = 30.0


_LUA_NOW = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + tonumber(t[2]) / 1000
local W = 60000
"""

# The token log: a ZSET (request id -> time logged) and a HASH (request id -> tokens);
# field '#' of the HASH holds the sum of the entries still in the window.
_LUA_TOKENS = """
local function trim_tokens(z, h)
  local old = redis.call('ZRANGEBYSCORE', z, '-inf', now - W)
  if #old == 0 then return tonumber(redis.call('HGET', h, '#') or '0') end
  local freed = 0
  for i = 1, #old, 500 do
    local ids = {unpack(old, i, math.min(i + 499, #old))}
    for _, v in ipairs(redis.call('HMGET', h, unpack(ids))) do freed = freed + (tonumber(v) or 0) end
    redis.call('HDEL', h, unpack(ids))
  end
  redis.call('ZREMRANGEBYSCORE', z, '-inf', now - W)
  return redis.call('HINCRBY', h, '#', -freed)
end
local function put_tokens(z, h, id, tokens)
  local old = tonumber(redis.call('HGET', h, id) or '0')
  redis.call('HSET', h, id, tokens)
  redis.call('HINCRBY', h, '#', tokens - old)
  redis.call('ZADD', z, now, id)
  redis.call('PEXPIRE', z, W + 1000)
  redis.call('PEXPIRE', h, W + 1000)
end
"""

# KEYS: rpm log, tpm log zset, tpm log hash, concurrency zset, budget counter
# ARGV: rpm, tpm, cost, max_concurrent, request id, lease ttl ms, budget (-1: none)
# -> {ok, reason, retry ms, rpm remaining, rpm reset ms, tpm remaining, tpm reset ms}
_ADMIT = (
    _LUA_NOW
    + _LUA_TOKENS
    + """
local rpm, tpm, cost = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3])
local maxc, budget, id = tonumber(ARGV[4]), tonumber(ARGV[7]), ARGV[5]
if budget >= 0 and tonumber(redis.call('GET', KEYS[5]) or '0') >= budget then
  return {0, 'budget', 0, 0, 0, 0, 0}
end
if maxc > 0 then
  redis.call('ZREMRANGEBYSCORE', KEYS[4], '-inf', now)
  if redis.call('ZCARD', KEYS[4]) >= maxc then return {0, 'concurrent', 1000, 0, 0, 0, 0} end
end
local out = {1, '', 0, 0, 0, 0, 0}
local function refuse(reason, retry)
  out[1] = 0
  if out[2] == '' then out[2] = reason end
  out[3] = math.max(out[3], math.ceil(retry))
end
local function newest(z)
  local last = redis.call('ZRANGE', z, -1, -1, 'WITHSCORES')
  if #last == 0 then return 0 end
  return math.ceil(tonumber(last[2]) + W - now)
end
if rpm > 0 then
  redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now - W)
  local n = redis.call('ZCARD', KEYS[1])
  if n >= rpm then
    local o = redis.call('ZRANGE', KEYS[1], n - rpm, n - rpm, 'WITHSCORES')
    refuse('rpm', tonumber(o[2]) + W - now)
    out[4], out[5] = 0, newest(KEYS[1])
  else
    out[4], out[5] = rpm - n - 1, W
  end
end
if tpm > 0 then
  local total = trim_tokens(KEYS[2], KEYS[3])
  if total + cost <= tpm then
    out[6], out[7] = tpm - total - cost, W
  else
    out[6], out[7] = math.max(0, tpm - total), newest(KEYS[2])
    local need, freed, retry = total + cost - tpm, 0, W
    local n = redis.call('ZCARD', KEYS[2])
    for i = 0, math.min(n, 2000) - 1, 200 do
      local page = redis.call('ZRANGE', KEYS[2], i, i + 199, 'WITHSCORES')
      for j = 1, #page, 2 do
        freed = freed + (tonumber(redis.call('HGET', KEYS[3], page[j])) or 0)
        if freed >= need then retry = tonumber(page[j + 1]) + W - now; break end
      end
      if freed >= need then break end
    end
    refuse('tpm', retry)
  end
end
if out[1] == 0 then return out end
if rpm > 0 then
  redis.call('ZADD', KEYS[1], now, id)
  redis.call('PEXPIRE', KEYS[1], W + 1000)
end
if tpm > 0 then put_tokens(KEYS[2], KEYS[3], id, cost) end
if maxc > 0 then
  redis.call('ZADD', KEYS[4], now + tonumber(ARGV[6]), id)
  redis.call('PEXPIRE', KEYS[4], tonumber(ARGV[6]) * 2)
end
return out
"""
)

# KEYS: tpm log zset, tpm log hash, concurrency zset, budget counter
# ARGV: tpm, tokens used, request id, release the lease (1/0), tokens for the budget (0 = none), budget ttl s
_SETTLE = (
    _LUA_NOW
    + _LUA_TOKENS
    + """
local used = tonumber(ARGV[2])
if tonumber(ARGV[1]) > 0 then
  trim_tokens(KEYS[1], KEYS[2])
  put_tokens(KEYS[1], KEYS[2], ARGV[3], used)
end
if ARGV[4] == '1' then redis.call('ZREM', KEYS[3], ARGV[3]) end
local spent = tonumber(ARGV[5])
if spent > 0 then
  redis.call('INCRBY', KEYS[4], spent)
  if tonumber(ARGV[6]) > 0 then redis.call('EXPIRE', KEYS[4], ARGV[6]) end
end
return 1
"""
)

# KEYS: concurrency zsets; ARGV: lease ttl ms, then one lease id per key
_REFRESH = (
    _LUA_NOW
    + """
for i, key in ipairs(KEYS) do redis.call('ZADD', key, 'XX', now + tonumber(ARGV[1]), ARGV[i + 1]) end
return #KEYS
"""
)


def _rkeys(name: str, budget_key: str) -> list[str]:
    # One hash tag per key name, so a Redis Cluster keeps a key's logs in one slot.
    p = f"gw:rl:{{{name}}}:"
    return [p + "rpm", p + "tpm", p + "tpm:n", p + "conc", p + "budget:" + budget_key]


# Admissions decided while Redis was unreachable, logged once it answers again, so the
# shared window counts them. KEYS: (rpm log, tpm zset, tpm hash) per admission;
# ARGV: (age ms, request id, tokens, rpm? 1/0) per admission.
_REPLAY = (
    _LUA_NOW
    + _LUA_TOKENS
    + """
for i = 0, #KEYS / 3 - 1 do
  local age, id, tokens = tonumber(ARGV[i * 4 + 1]), ARGV[i * 4 + 2], tonumber(ARGV[i * 4 + 3])
  local at = now - age
  if ARGV[i * 4 + 4] == '1' then
    redis.call('ZADD', KEYS[i * 3 + 1], at, id)
    redis.call('PEXPIRE', KEYS[i * 3 + 1], W + 1000)
  end
  if tokens >= 0 then
    put_tokens(KEYS[i * 3 + 2], KEYS[i * 3 + 3], id, tokens)
    redis.call('ZADD', KEYS[i * 3 + 2], at, id)
  end
end
return #KEYS / 3
"""
)

# KEYS: the replica set; ARGV: this replica's id, how long a silent replica still counts (ms)
_HEARTBEAT = (
    _LUA_NOW
    + """
redis.call('ZADD', KEYS[1], now, ARGV[1])
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now - tonumber(ARGV[2]))
redis.call('PEXPIRE', KEYS[1], tonumber(ARGV[2]) * 2)
return redis.call('ZCARD', KEYS[1])
"""
)

REPLICAS_KEY = "gw:rl:replicas"
HEARTBEAT_S = 2.0
REPLICA_STALE_S = 10.0  # a replica silent this long no longer counts
# An admission waits at most this long on Redis before it is decided locally. Measured
# (issue #14): 0.5 s timed out under a 150-request burst on a busy 2-core host, because
# the timer fires while the event loop catches up, not because Redis was slow.
TIMEOUT_S = 2.0
POOL_SIZE = 32  # connections per replica; more only adds connects under a burst


class RedisCounters:
    """The shared store. Also keeps `replicas`: how many gateways share it (heartbeats),
    the last known count while Redis is unreachable, so the limiter can fall back to
    this replica's share of each limit."""

    def __init__(self, url: str) -> None:
        import redis.asyncio as aioredis
        from redis.asyncio.retry import Retry
        from redis.backoff import NoBackoff

        # No retries: an admission must not wait long on a sick Redis. A bounded pool
        # makes a burst queue for a connection instead of opening one socket per request.
        pool = aioredis.BlockingConnectionPool.from_url(
            url, max_connections=POOL_SIZE, timeout=TIMEOUT_S,
            socket_timeout=TIMEOUT_S, socket_connect_timeout=TIMEOUT_S, retry=Retry(NoBackoff(), 0),
        )  # fmt: skip
        self.r = aioredis.Redis(connection_pool=pool)
        self._admit = self.r.register_script(_ADMIT)
        self._settle = self.r.register_script(_SETTLE)
        self._refresh = self.r.register_script(_REFRESH)
        self._heartbeat = self.r.register_script(_HEARTBEAT)
        self._replay = self.r.register_script(_REPLAY)
        self.replica_id = uuid.uuid4().hex
        self.replicas = 1  # last known number of live replicas (this one included)
        self.leases: dict[str, str] = {}  # lease id -> concurrency zset, for refreshing
        # Admissions the limiter decided locally while Redis was unreachable (request, when
        # by the monotonic clock), logged here by the next admission or heartbeat.
        self.unsynced: deque[tuple[Request, float]] = deque()
        self._tasks = [
            asyncio.create_task(self._refresh_loop(), name="ratelimit-lease-refresh"),
            asyncio.create_task(self._heartbeat_loop(), name="ratelimit-heartbeat"),
        ]

    async def admit(self, r: Request) -> Verdict:
        keys = _rkeys(r.name, r.budget_key)
        ttl_ms = int(LEASE_TTL_S * 1000)
        args = [r.rpm, r.tpm, r.cost, r.max_concurrent, r.lease, ttl_ms, r.budget]
        ok, reason, retry, rr, rreset, tr, treset = await asyncio.wait_for(
            self._admit(keys=keys, args=args), TIMEOUT_S
        )
        if ok and r.max_concurrent > 0:
            self.leases[r.lease] = keys[3]
        return Verdict(
            bool(ok),
            reason.decode() if isinstance(reason, bytes) else str(reason),
            retry / 1000,
            int(rr),
            rreset / 1000,
            int(tr),
            treset / 1000,
        )

    async def settle(self, r: Request, used: int, lease: bool) -> None:
        """`lease`: the admission holds a concurrency slot here to release."""
        keys = _rkeys(r.name, r.budget_key)
        self.leases.pop(r.lease, None)
        release = "1" if lease and r.max_concurrent > 0 else "0"
        spent = used if r.budget >= 0 else 0
        await asyncio.wait_for(
            self._settle(keys=keys[1:], args=[r.tpm, used, r.lease, release, spent, r.budget_ttl]), TIMEOUT_S
        )

    async def replay_unsynced(self) -> None:
        """Log in Redis the local admissions of the last minute (`unsynced`), at their times.

        Idempotent per request id, so a batch that timed out but ran is not counted twice.
        """
        now = time.monotonic()
        while self.unsynced and now - self.unsynced[0][1] >= WINDOW_S:
            self.unsynced.popleft()
        while self.unsynced:
            items = list(itertools.islice(self.unsynced, 200))
            keys: list[str] = []
            args: list[str | int] = []
            for r, at in items:
                keys += _rkeys(r.name, r.budget_key)[:3]
                args += [int((now - at) * 1000), r.lease, r.cost if r.tpm > 0 else -1, 1 if r.rpm > 0 else 0]
            await asyncio.wait_for(self._replay(keys=keys, args=args), TIMEOUT_S)
            for _ in items:
                self.unsynced.popleft()

    async def seed_budget(self, name: str, period: str, spent: int, ttl: int) -> None:
        # NX: the first replica to see this period seeds it from the ledger; others keep counting.
        await self.r.set(_rkeys(name, period)[4], spent, nx=True, ex=ttl or None)

    async def beat(self) -> int:
        """Announce this replica and learn how many share the store; log `unsynced` first."""
        if self.unsynced:
            await self.replay_unsynced()
        n = await asyncio.wait_for(
            self._heartbeat(keys=[REPLICAS_KEY], args=[self.replica_id, int(REPLICA_STALE_S * 1000)]),
            TIMEOUT_S,
        )
        self.replicas = max(1, int(n))
        return self.replicas

    async def _heartbeat_loop(self) -> None:
        failing = False
        while True:
            try:
                await self.beat()
                failing = False
            except Exception as e:
                if not failing:
                    log.warning("rate limit heartbeat failed (%s); assuming %d replica(s)", e, self.replicas)
                failing = True
            await asyncio.sleep(HEARTBEAT_S)

    async def _refresh_loop(self) -> None:
        while True:
            await asyncio.sleep(LEASE_REFRESH_S)
            if not self.leases:
                continue
            items = list(self.leases.items())
            try:
                await self._refresh(
                    keys=[k for _, k in items], args=[int(LEASE_TTL_S * 1000), *(i for i, _ in items)]
                )
            except Exception as e:
                log.warning("could not refresh %d concurrency lease(s) in Redis: %s", len(items), e)

    async def close(self) -> None:
        for t in self._tasks:
            t.cancel()
        for t in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await t
        with contextlib.suppress(Exception):
            await asyncio.wait_for(self.r.zrem(REPLICAS_KEY, self.replica_id), 0.5)
        await self.r.aclose()
        await self.r.connection_pool.disconnect()
