"""The limiter: admission, headers, settlement; the same for both counter stores."""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import math
import time
import uuid
from dataclasses import dataclass
from typing import TYPE_CHECKING

from gateway.config import ConfigError
from gateway.errors import GatewayError

from .budget import Budget, parse_budget
from .cost import admission_cost, used_tokens
from .local_counters import LocalCounters, Request, Verdict
from .redis_counters import RedisCounters

if TYPE_CHECKING:
    from redis.asyncio import Redis

    from gateway.config import GatewayConfig
    from gateway.context import RequestContext
    from gateway.keys.auth import Key
    from gateway.metering import Meter

log = logging.getLogger("gateway.ratelimit")

RETRY_AFTER_MAX_S = 60
# Retry-After for a refusal decided without Redis: about when the heartbeat probes it again.
REDIS_BACKOFF_S = 1.0


@dataclass(eq=False)
class Admission:
    """What `admit` decided; `settle` needs it back. The shared `NOOP` is for keys without limits."""

    request: Request | None = None
    rpm: int | None = None
    rpm_remaining: int = 0
    rpm_reset: float = 0.0
    tpm: int | None = None
    tpm_remaining: int = 0
    tpm_reset: float = 0.0
    settled: bool = False
    refused: str | None = None  # why admission was refused (rpm|tpm|concurrent|budget)
    degraded: bool = False  # decided by this replica alone (Redis unreachable)


NOOP = Admission()


class RateLimited(GatewayError):
    """429 from the limiter; `reason` is rpm|tpm|concurrent|budget (the metrics label)."""

    def __init__(
        self, reason: str, message: str, code: str, headers: dict[str, str], type: str | None = None
    ):
        super().__init__(429, message, code, type=type, headers=headers)
        self.reason = reason


def format_duration(seconds: float) -> str:
    """OpenAI's reset format: `20ms`, `1s`, `1.5s`, `6m0s`."""
    if seconds <= 0:
        return "0s"
    if seconds < 1:
        return f"{max(1, round(seconds * 1000))}ms"
    if seconds < 60:
        return f"{round(seconds, 3):g}s"
    m, s = divmod(seconds, 60)
    return f"{int(m)}m{round(s, 3):g}s"


# --- the limiter -----------------------------------------------------------------------

Counters = LocalCounters | RedisCounters


class Limiter:
    """Admits or refuses requests per key. Each method documents what it waits on."""

    def __init__(self, counters: Counters, meter: Meter | None = None) -> None:
        self.counters = counters
        self.meter = meter
        # With Redis: this replica's own admissions, logged as they happen, so that while
        # Redis is unreachable admissions are decided here against this replica's share.
        self.fallback = LocalCounters() if isinstance(counters, RedisCounters) else None
        self.degraded: dict[str, int] = {}  # reason -> decisions taken without Redis
        self._seeded: set[tuple[str, str]] = set()
        self._seeding: dict[tuple[str, str], asyncio.Future[None]] = {}
        self._bad_budgets: set[str] = set()
        self._seed_logged: dict[str, float] = {}

    @classmethod
    async def start(cls, cfg: GatewayConfig, meter: Meter | None) -> Limiter:
        """In-process limits, or Redis-backed ones when `cfg.redis_url` is set.

        Raises ConfigError for a config key whose budget cannot be parsed: better to
        refuse to start than to serve a key with no budget by mistake.
        """
        problems = []
        for i, k in enumerate(cfg.auth.keys):
            if k.budget:
                try:
                    parse_budget(k.budget)
                except ValueError as e:
                    problems.append(f"auth.keys.{i}.budget: {e}")
        if problems:
            raise ConfigError("\n".join(problems))
        url = cfg.redis_url
        if not url:
            return cls(LocalCounters(), meter)
        counters = RedisCounters(url)
        try:  # learn the replica count before the first admission, when Redis answers
            await counters.beat()
        except Exception as e:
            log.warning("rate limit store unreachable at start-up (%s); assuming 1 replica", e)
        return cls(counters, meter)

    async def admit(self, key: Key, ctx: RequestContext) -> Admission:
        """Decide one request: returns the admission or raises `RateLimited` (429).

        A refusal is also left on `ctx.admission` (with `refused` set) so the metrics see
        its reason; `settle` ignores it.

        Waits on nothing for keys without limits; otherwise on one Redis script call (or
        none in-process), plus one ledger query the first time a budget period is seen.
        """
        if not (key.rpm or key.tpm or key.max_concurrent or key.budget):
            return NOOP
        now = time.time()
        budget, budget_key, ttl = -1, "", 0
        b = self._budget(key)
        if b is not None:
            budget_key, _, end = b.window(now)
            budget, ttl = b.limit, (int(end - now) + 86400 if end else 0)
            await self._seed(key.name, b, budget_key, ttl, now)
        req = Request(
            name=key.name,
            rpm=key.rpm or 0,
            tpm=key.tpm or 0,
            cost=min(admission_cost(ctx.endpoint, ctx.body), key.tpm) if key.tpm else 0,
            max_concurrent=key.max_concurrent or 0,
            lease=uuid.uuid4().hex,
            budget=budget,
            budget_key=budget_key,
            budget_ttl=ttl,
        )
        v, degraded = await self._decide(req)
        adm = Admission(req, key.rpm, v.rpm_remaining, v.rpm_reset, key.tpm, v.tpm_remaining, v.tpm_reset)
        adm.degraded = degraded
        if not v.ok:
            adm.request, adm.refused = None, v.reason
            if v.reason in ("budget", "concurrent"):
                adm.rpm = adm.tpm = None  # the buckets were not consulted: no numbers to report
            ctx.admission = adm
            raise self._refusal(key, v, self.headers(adm))
        return adm

    async def _decide(self, req: Request) -> tuple[Verdict, bool]:
        """The verdict, and whether it was taken without Redis (this replica's share)."""
        fb, counters = self.fallback, self.counters
        if fb is None or not isinstance(counters, RedisCounters):
            return await counters.admit(req), False
        if not counters.reachable:
            return self._degraded(req, "backoff"), True  # Redis failed and no heartbeat got through since
        try:
            if counters.unsynced:
                await counters.replay_unsynced()
            v = await counters.admit(req)
        except Exception as e:
            self._counters_failed(e)
            return self._degraded(req, "timeout" if isinstance(e, TimeoutError) else "error"), True
        if v.ok:
            fb.record(req)
        elif v.reason == "budget":  # remembered, so the fallback refuses it too
            bk = (req.name, req.budget_key)
            fb.spent[bk] = max(fb.spent.get(bk, 0), req.budget)
        return v, False

    def _degraded(self, req: Request, reason: str) -> Verdict:
        """Decide against this replica's share of each limit: limit // live replicas.

        Rounded down, so N replicas together never exceed the limit; a share of 0 refuses.
        The replica's own admissions of the last 60 s (made via Redis too) count against it.
        """
        assert self.fallback is not None and isinstance(self.counters, RedisCounters)
        self.degraded[reason] = self.degraded.get(reason, 0) + 1
        n = self.counters.replicas
        share = dataclasses.replace(req)
        for dim in ("rpm", "tpm", "max_concurrent"):
            limit = getattr(req, dim)
            if limit > 0:
                if limit // n == 0:
                    reason_ = "concurrent" if dim == "max_concurrent" else dim
                    return Verdict(False, reason_, REDIS_BACKOFF_S)
                setattr(share, dim, limit // n)
        share.cost = min(req.cost, share.tpm) if share.tpm else 0
        v = self.fallback.admit_now(share)
        if v.ok:
            req.cost = share.cost
            self.counters.unsynced.append((req, time.monotonic()))
        return v

    def _refusal(self, key: Key, v: Verdict, headers: dict[str, str]) -> RateLimited:
        if v.reason == "budget":
            return RateLimited(
                "budget",
                f"Key `{key.name}` has used its token budget ({key.budget}). "
                "It renews at the start of the next period.",
                "insufficient_quota",
                {**headers, "x-should-retry": "false"},
                type="insufficient_quota",
            )
        retry = min(RETRY_AFTER_MAX_S, max(1, math.ceil(v.retry_after)))
        what = {"rpm": f"{key.rpm} requests per minute", "tpm": f"{key.tpm} tokens per minute"}.get(
            v.reason, f"{key.max_concurrent} concurrent requests"
        )
        headers = {
            **headers,
            "retry-after": str(retry),
            "retry-after-ms": str(min(60000, max(1, int(v.retry_after * 1000)))),
        }
        return RateLimited(
            v.reason,
            f"Rate limit reached for key `{key.name}`: {what}. Please retry after {retry}s.",
            "rate_limit_exceeded",
            headers,
        )

    def _budget(self, key: Key) -> Budget | None:
        if not key.budget:
            return None
        try:
            return parse_budget(key.budget)
        except ValueError as e:  # a dynamic key is validated on creation; a reloaded config may not be
            if key.name not in self._bad_budgets:
                self._bad_budgets.add(key.name)
                log.error("key %s: invalid budget %r (%s); not enforcing it", key.name, key.budget, e)
            return None

    def headers(self, adm: Admission) -> dict[str, str]:
        """OpenAI's x-ratelimit-* headers for a response (empty for keys without limits)."""
        h: dict[str, str] = {}
        if adm.rpm:
            h["x-ratelimit-limit-requests"] = str(adm.rpm)
            h["x-ratelimit-remaining-requests"] = str(max(0, adm.rpm_remaining))
            h["x-ratelimit-reset-requests"] = format_duration(adm.rpm_reset)
        if adm.tpm:
            h["x-ratelimit-limit-tokens"] = str(adm.tpm)
            h["x-ratelimit-remaining-tokens"] = str(max(0, adm.tpm_remaining))
            h["x-ratelimit-reset-tokens"] = format_duration(adm.tpm_reset)
        return h

    async def settle(self, adm: Admission, ctx: RequestContext) -> None:
        """Reconcile tokens, free the concurrency slot, charge the budget. Never raises; once only."""
        req = adm.request
        if req is None or adm.settled:
            return
        adm.settled = True
        used = used_tokens(ctx)
        if self.fallback is not None:
            self.fallback.settle_now(req, used, lease=True)
        counters = self.counters
        if isinstance(counters, RedisCounters) and not counters.reachable:
            # Known down: waiting out a timeout would hold the client's connection for nothing.
            # The tokens stay in this replica's own window (above); Redis misses them.
            return
        try:
            # A degraded admission holds no slot in Redis; its tokens and budget still go there.
            await counters.settle(req, used, lease=not adm.degraded)
        except Exception as e:
            self._counters_failed(e)

    async def _seed(self, name: str, b: Budget, period: str, ttl: int, now: float) -> None:
        """Start a budget period's counter from the ledger, once per process and period."""
        k = (name, period)
        if k in self._seeded:
            return
        fut = self._seeding.get(k)
        if fut is not None:
            await asyncio.shield(fut)
            return
        fut = self._seeding[k] = asyncio.get_running_loop().create_future()
        try:
            spent = 0
            if self.meter is not None:
                _, start, _ = b.window(now)
                spent = await self.meter.spend(name, start)
            await self.counters.seed_budget(name, period, spent, ttl)
            self._seeded.add(k)
        except Exception as e:
            # Not seeded: the next admission tries again. Log at most every 10 s per key.
            if time.monotonic() - self._seed_logged.get(name, -1e9) > 10.0:
                self._seed_logged[name] = time.monotonic()
                log.warning("could not read the budget spent by key %s from the ledger: %s", name, e)
        finally:
            del self._seeding[k]
            fut.set_result(None)

    def _counters_failed(self, e: Exception) -> None:
        counters = self.counters
        if not isinstance(counters, RedisCounters) or not counters.reachable:
            return
        counters.reachable = False  # until the heartbeat gets through again
        log.warning(
            "rate limit store failed (%s: %s); until its heartbeat succeeds, each admission is decided "
            "here, against this replica's share (1/%d) of each limit",
            type(e).__name__,
            e,
            counters.replicas,
        )

    @property
    def redis(self) -> Redis | None:
        """The Redis client the limits are shared through (None in-process): other state the
        replicas share (routing.shared_routes) reuses it, one connection pool per replica."""
        return self.counters.r if isinstance(self.counters, RedisCounters) else None

    async def close(self) -> None:
        await self.counters.close()
