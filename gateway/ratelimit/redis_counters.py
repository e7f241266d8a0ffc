"""The Redis counters: one Lua script per admission, so N replicas enforce one limit."""

from __future__ import annotations

import asyncio
import contextlib
import logging

from .local_counters import Request, Verdict

log = logging.getLogger("gateway.ratelimit")

LEASE_TTL_S = 120.0  # a concurrency slot not refreshed for this long is freed
LEASE_REFRESH_S = 30.0


_LUA_NOW = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + tonumber(t[2]) / 1000
local W = 60000
"""

# KEYS: rpm tat, tpm tat, concurrency zset, budget counter
# ARGV: rpm, tpm, cost, max_concurrent, lease id, lease ttl ms, budget (-1: none)
# -> {ok, reason, retry ms, rpm remaining, rpm reset ms, tpm remaining, tpm reset ms}
_ADMIT = (
    _LUA_NOW
    + """
local rpm, tpm, cost = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3])
local maxc, budget = tonumber(ARGV[4]), tonumber(ARGV[7])
if budget >= 0 and tonumber(redis.call('GET', KEYS[4]) or '0') >= budget then
  return {0, 'budget', 0, 0, 0, 0, 0}
end
if maxc > 0 then
  redis.call('ZREMRANGEBYSCORE', KEYS[3], '-inf', now)
  if redis.call('ZCARD', KEYS[3]) >= maxc then return {0, 'concurrent', 1000, 0, 0, 0, 0} end
end
local out = {1, '', 0, 0, 0, 0, 0}
local new = {}
local function gcra(i, key, limit, c)
  local interval = W / limit
  local tat = tonumber(redis.call('GET', key) or '0')
  if tat < now then tat = now end
  local n = tat + c * interval
  if n - now > W + 0.001 then
    out[1] = 0
    out[2] = i == 1 and 'rpm' or 'tpm'
    out[3] = math.max(out[3], math.ceil(n - W - now))
    out[3 + i * 2 - 1] = math.floor((W - (tat - now)) / interval + 1e-6)
    out[3 + i * 2] = math.ceil(tat - now)
  else
    new[i] = n
    out[3 + i * 2 - 1] = math.floor((W - (n - now)) / interval + 1e-6)
    out[3 + i * 2] = math.ceil(n - now)
  end
end
if rpm > 0 then gcra(1, KEYS[1], rpm, 1) end
if tpm > 0 then gcra(2, KEYS[2], tpm, cost) end
if out[1] == 0 then return out end
for i = 1, 2 do
  if new[i] then
    redis.call('SET', KEYS[i], string.format('%.3f', new[i]), 'PX', math.ceil(new[i] - now) + 1000)
  end
end
if maxc > 0 then
  redis.call('ZADD', KEYS[3], now + tonumber(ARGV[6]), ARGV[5])
  redis.call('PEXPIRE', KEYS[3], tonumber(ARGV[6]) * 2)
end
return out
"""
)

# KEYS: tpm tat, concurrency zset, budget counter
# ARGV: tpm, token delta, lease id ('' = none), tokens used for the budget (0 = none), budget ttl s
_SETTLE = (
    _LUA_NOW
    + """
local tpm, delta = tonumber(ARGV[1]), tonumber(ARGV[2])
if tpm > 0 and delta ~= 0 then
  local tat = tonumber(redis.call('GET', KEYS[1]) or '0')
  if tat < now then tat = now end
  local n = math.max(now, tat + delta * W / tpm)
  if n > now then
    redis.call('SET', KEYS[1], string.format('%.3f', n), 'PX', math.ceil(n - now) + 1000)
  else
    redis.call('DEL', KEYS[1])
  end
end
if ARGV[3] ~= '' then redis.call('ZREM', KEYS[2], ARGV[3]) end
local used = tonumber(ARGV[4])
if used > 0 then
  redis.call('INCRBY', KEYS[3], used)
  if tonumber(ARGV[5]) > 0 then redis.call('EXPIRE', KEYS[3], ARGV[5]) end
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
    p = f"gw:rl:{name}:"
    return [p + "rpm", p + "tpm", p + "conc", p + "budget:" + budget_key]


class RedisCounters:
    def __init__(self, url: str) -> None:
        import redis.asyncio as aioredis
        from redis.asyncio.retry import Retry
        from redis.backoff import NoBackoff

        # No retries and short timeouts: an admission must not wait long on a sick Redis.
        self.r = aioredis.Redis.from_url(
            url, socket_timeout=0.5, socket_connect_timeout=0.5, retry=Retry(NoBackoff(), 0)
        )
        self._admit = self.r.register_script(_ADMIT)
        self._settle = self.r.register_script(_SETTLE)
        self._refresh = self.r.register_script(_REFRESH)
        self.leases: dict[str, str] = {}  # lease id -> concurrency zset, for refreshing
        self._task = asyncio.create_task(self._refresh_loop(), name="ratelimit-lease-refresh")

    async def admit(self, r: Request) -> Verdict:
        keys = _rkeys(r.name, r.budget_key)
        ttl_ms = int(LEASE_TTL_S * 1000)
        args = [r.rpm, r.tpm, r.cost, r.max_concurrent, r.lease, ttl_ms, r.budget]
        ok, reason, retry, rr, rreset, tr, treset = await self._admit(keys=keys, args=args)
        if ok and r.max_concurrent > 0:
            self.leases[r.lease] = keys[2]
        return Verdict(
            bool(ok),
            reason.decode() if isinstance(reason, bytes) else str(reason),
            retry / 1000,
            int(rr),
            rreset / 1000,
            int(tr),
            treset / 1000,
        )

    async def settle(self, r: Request, delta: int, used: int, lease: bool) -> None:
        keys = _rkeys(r.name, r.budget_key)
        self.leases.pop(r.lease, None)
        lease_id = r.lease if lease and r.max_concurrent > 0 else ""
        used = used if r.budget >= 0 else 0
        await self._settle(
            keys=[keys[1], keys[2], keys[3]], args=[r.tpm, delta, lease_id, used, r.budget_ttl]
        )

    async def seed_budget(self, name: str, period: str, spent: int, ttl: int) -> None:
        # NX: the first replica to see this period seeds it from the ledger; others keep counting.
        await self.r.set(_rkeys(name, period)[3], spent, nx=True, ex=ttl or None)

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
        self._task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._task
        await self.r.aclose()
