"""Which on-demand engines are resident on their devices: starts, wakes, idle parking, swaps.

One coordinator per supervisor, one task, event-driven (it re-decides on every engine state
change and on a timer for the next time-based decision). It never starts or stops a process
itself: it calls `EngineProcess.activate` / `park`, and each engine's own loop does the work.

Policy (engines.swap):
- A request that finds its pool with no ready engine waits in the pool's queue and marks
  the pool *wanted* (`needed`). Wanted pools are served oldest first.
- A wanted pool whose devices are free is activated at once: its parked engines wake
  (SLEEPING -> WAKING) or start (STOPPED -> STARTING).
- Devices held by another pool's engine (any state but STOPPED/SLEEPING) are freed by a
  swap: the holder is parked (DRAINING: no new dispatches, in-flight requests finish,
  bounded by server.drain_seconds; then it sleeps if it can, else stops) and the wanted
  pool is activated once the devices are free. A swap never aborts a request: the drain
  comes first and the sleep itself is sent with mode=wait.
- `residency` (default) evicts a holder only when (1) its turn is over: it has been READY
  for `min_residency` seconds and for `cost_factor` times the measured cost of the swap
  that would end it (its own last sleep or stop plus the wanted engine's last wake, if it
  sleeps, or cold load, if it is stopped; an unmeasured part counts 0), and (2) its pool has nothing queued or in flight and has been idle for `idle_grace`
  seconds (its users are between requests, not mid-conversation); or when the wanted pool
  has waited `max_defer` seconds, whatever the resident is doing (so a busy resident
  cannot starve it: max_defer is the operator's bound and wins over the turn). `fcfs`
  evicts as soon as the holder is READY: the baseline the benchmark compares against.
- Why the turn scales with the swap's cost: a swap leaves the device serving nobody for
  its whole cost C. If every turn lasts at least k*C of the swap that ends it
  (k = cost_factor), that lost time stays under 1/(1+k) of the device's time under any
  arrival pattern (k=2: the device serves at least two thirds of the time). So a resident
  that would make way for a 5 s cold load keeps the device ~10 s, one that would make way
  for a 0.3 s wake is bounded by min_residency alone: a fixed min_residency would be too
  long for wakes or too short for cold loads.
- A-B-A-B (two pools that keep alternating): a turn lasts as above and ends at the
  resident's first `idle_grace` pause after that (at the latest `max_defer` after the
  other pool first asked). Requests for the absent pool accumulate meanwhile and are
  served together on its next turn, so swaps are bounded by one per turn per device set
  whatever the arrival pattern. The price: a request for the absent pool waits until the
  resident's turn ends and it pauses (at most max_defer), plus the swap itself (drain +
  sleep or stop + wake or load).
- A start that fails (engine exits, missing binary, readiness refused) leaves its engine
  FAILED, holding no device: it blocks nobody's swap, the requests waiting for it get a
  503 at once (`start_failed`), and requests arriving before its backoff has passed get
  the same 503 without waiting (`needed`). The first request after the backoff starts it
  again.
- Idle: an engine with `idle_timeout` whose pool has had no request in flight or queued
  for that long is parked the same way (sleep where it can, else stop).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import time
from collections import Counter
from typing import TYPE_CHECKING

from ..errors import GatewayError, service_unavailable
from ..routing.backend import BackendState
from .process import PARKED, EngineProcess

if TYPE_CHECKING:
    from ..routing.pool import Pool
    from .supervisor import Supervisor

log = logging.getLogger("gateway.engines")
S = BackendState
SERVING = (S.READY, S.UNHEALTHY)
# While a swap waits on a resident's queue, that queue empties without any engine state
# change; re-check this often (a few pools: microseconds each).
PENDING_TICK = 0.01
# A start's own deadline (startup_timeout) runs from its spawn, a moment after the request
# queued: the request waits this much longer, so the failed start answers it with its reason.
START_SLACK = 5.0


class Residency:
    def __init__(self, sup: Supervisor) -> None:
        self.sup = sup
        self.swaps: Counter[str] = Counter()  # pool swapped in -> times
        self._wanted_since: dict[str, float] = {}  # pool -> monotonic time it first had to wait

    # --- the pool's demand hook (routing.pool.Demand) ---

    def needed(self, pool: Pool) -> float | None:
        """A request is about to queue in `pool`. If the pool's engines are on demand and
        none is serving, mark it wanted; returns how long the request may wait (None:
        the pool's ordinary queue timeout)."""
        mine = self._engines(pool.name)
        managed = [e for e in mine if e.demand_started]
        if not managed or any(e.state in SERVING for e in mine):
            return None
        refused = self._start_refused(pool.name, mine, time.monotonic())
        if refused is not None:
            raise refused  # its start failed and the backoff has not passed: do not wait for nothing
        self._wanted_since.setdefault(pool.name, time.monotonic())
        self.sup.pulse()
        spec = managed[0].spec
        budget = spec.startup_timeout + START_SLACK
        if any(self._shares(e) for e in managed):
            cfg = self.sup.settings.swap
            budget += cfg.max_defer + self.sup.state.config.server.drain_seconds + spec.wake_timeout
        return max(pool.cfg.queue.timeout, budget)

    def start_failed(self, e: EngineProcess) -> None:
        """`e` gave up a start (FAILED, retry_at set): if no other engine of its pool can still
        serve, the requests waiting for the pool are answered now rather than at their timeout."""
        pool = self.sup.state.pools.get(e.pool_name)
        if e.retry_at is None or pool is None:
            return
        mine = self._engines(e.pool_name)
        now = time.monotonic()
        error = self._start_refused(pool.name, mine, now)
        if error is None:
            return
        self._wanted_since.pop(pool.name, None)
        failed = pool.fail_waiters(lambda: self._start_refused(pool.name, mine, now) or error)
        if failed:
            log.warning("%s: %d waiting request(s) answered 503: %s", pool.name, failed, error.message)

    def _start_refused(self, name: str, mine: list[EngineProcess], now: float) -> GatewayError | None:
        """The 503 for a pool none of whose engines can serve or start now: all of them are
        failed starts still in their backoff (or with a spec that cannot work)."""
        if not mine or not all(e.state is S.FAILED and e.retry_at is not None for e in mine):
            return None
        if any(now >= e.retry_at for e in mine if e.retry_at is not None):
            return None  # one may be tried again: this request starts it
        wait = min(e.retry_at for e in mine if e.retry_at is not None)
        reason = (mine[0].backend.last_error or "unknown error").splitlines()[0]
        if math.isinf(wait):
            return service_unavailable(
                f"Pool `{name}`: its engine cannot start ({reason}); fix the pool's engine settings and reload.",
                retry_after=60, code="engine_start_failed",
            )  # fmt: skip
        seconds = max(1, math.ceil(wait - now))
        return service_unavailable(
            f"Pool `{name}`: its engine failed to start ({reason}); the next request after {seconds}s starts it again.",
            retry_after=seconds, code="engine_start_failed",
        )  # fmt: skip

    def waited(self, pool: Pool, seconds: float) -> None:
        metrics = self.sup.state.metrics
        if metrics is not None:
            metrics.load_waited(pool.name, seconds)

    # --- the coordinator task ---

    async def run(self) -> None:
        while True:
            changed = self.sup.changed_event()  # taken before deciding: no change is lost
            delay = self.step(time.monotonic())
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(changed.wait(), delay)

    def step(self, now: float) -> float | None:
        """Make every decision due at `now`; returns seconds until the next timed one."""
        due: list[float] = []
        reserved: set[str] = set()  # devices an older wanted pool is waiting for
        for name, since in sorted(self._wanted_since.items(), key=lambda kv: kv[1]):
            pool = self.sup.state.pools.get(name)
            mine = self._engines(name)
            if pool is None or not mine or pool.queued == 0 or any(not self._away(e) for e in mine):
                del self._wanted_since[name]  # served, activating, or its waiters gave up
                continue
            refused = self._start_refused(name, mine, now)
            if refused is not None:  # failed starts in their backoff: answer now, not at the timeout
                del self._wanted_since[name]
                pool.fail_waiters(lambda: self._start_refused(name, mine, now) or refused)  # noqa: B023 - called at once
                continue
            if any(e.state is S.DRAINING for e in mine):
                due.append(now + PENDING_TICK)  # leaving (idle or swapped out): bring it back after
                continue
            wants = {d for e in mine for d in e.devices}
            if wants & reserved:
                continue
            blockers = [b for e in mine for b in self._blockers(e)]
            if not blockers:
                for e in mine:
                    e.activate(f"{pool.queued} request(s) waiting")
                del self._wanted_since[name]
                continue
            reserved |= wants
            if not all(b.state in SERVING for b in blockers):
                due.append(now + PENDING_TICK)  # still starting, waking or draining
                continue
            when = self._evict_at(blockers, mine, since, now)
            if when > now:
                due.append(when)
                continue
            self.swaps[name] += 1
            drain = self.sup.state.config.server.drain_seconds
            for b in {id(b): b for b in blockers}.values():
                log.info("swap: %s leaves %s for %s", b.id, ",".join(b.devices), name)
                b.park(f"swapped out for {name}", drain)
        due += self._park_idle(now)
        return max(0.0, min(due) - now) if due else None

    def _evict_at(self, blockers: list[EngineProcess], wanted: list[EngineProcess], since: float, now: float) -> float:
        cfg = self.sup.settings.swap
        if cfg.policy == "fcfs":
            return now
        forced = since + cfg.max_defer
        if now >= forced:
            return now
        when = now
        for b in blockers:
            pool = self.sup.state.pools.get(b.pool_name)
            ready = b.ready_since if b.ready_since is not None else now
            if pool is not None and (pool.queued or pool.outstanding):
                return min(now + PENDING_TICK, forced)  # still in use: its requests first
            idle_since = max(pool.last_release if pool is not None else 0.0, ready)
            when = max(when, ready + self.turn(b, wanted), idle_since + cfg.idle_grace)
        return min(when, forced)

    def turn(self, resident: EngineProcess, wanted: list[EngineProcess]) -> float:
        """The least time `resident` keeps its devices once READY before making way for
        `wanted` (see the module docstring): min_residency, or cost_factor times the measured
        cost of that swap if longer."""
        cfg = self.sup.settings.swap
        cost = (resident.last_park or 0.0) + max((_activation(w) for w in wanted), default=0.0)
        return max(cfg.min_residency, cfg.cost_factor * cost)

    def shown_turn(self, e: EngineProcess) -> float | None:
        """For status: `e`'s turn against the costliest engine that shares its devices."""
        sharers = [x for x in self.sup.live() if x.pool_name != e.pool_name and set(e.devices) & set(x.devices)]
        return self.turn(e, sharers) if sharers else None

    def _park_idle(self, now: float) -> list[float]:
        due: list[float] = []
        drain = self.sup.state.config.server.drain_seconds
        for e in self.sup.live():
            timeout = e.spec.idle_timeout
            if timeout is None or e.state is not S.READY:
                continue
            pool = self.sup.state.pools.get(e.pool_name)
            if pool is None:
                continue
            if pool.queued or pool.outstanding:
                # Releases do not wake this task (they are on the hot path): look again soon.
                due.append(now + min(1.0, timeout / 4))
                continue
            at = max(pool.last_release, e.ready_since if e.ready_since is not None else now) + timeout
            if now >= at:
                e.park(f"idle for {timeout:g}s", drain)
            else:
                due.append(at)
        return due

    # --- helpers ---

    def _engines(self, pool: str) -> list[EngineProcess]:
        return [e for e in self.sup.live() if e.pool_name == pool]

    @staticmethod
    def _away(e: EngineProcess) -> bool:
        """Needs an activation to serve again: parked (stopped, asleep, a failed start) or leaving."""
        return e.parked or e.state is S.DRAINING

    def _blockers(self, e: EngineProcess) -> list[EngineProcess]:
        """Other pools' engines holding any of `e`'s devices. A FAILED engine holds none: its
        process was killed before it said so (an always-on one may start again after its
        backoff, but only on-demand engines share devices: config.py checks)."""
        if not e.devices:
            return []
        mine = set(e.devices)
        return [
            x for x in self.sup.live()
            if x.pool_name != e.pool_name and x.state not in (*PARKED, S.FAILED) and mine & set(x.devices)
        ]  # fmt: skip

    def _shares(self, e: EngineProcess) -> bool:
        mine = set(e.devices)
        return any(x.pool_name != e.pool_name and mine & set(x.devices) for x in self.sup.live())


def _activation(e: EngineProcess) -> float:
    """What bringing `e` back would cost, as last measured: a wake if it sleeps, else a cold
    load (0 when never measured: min_residency covers it)."""
    if e.state is S.SLEEPING:
        return e.last_wake or 0.0
    return e.last_load or 0.0
