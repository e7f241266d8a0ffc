"""The supervisor: owns every spawned engine and every endpoint probe of one gateway.

It creates one `Backend(source="spawned", state=STARTING)` per replica, adds it to its pool
at once (so status shows it) and lets `EngineProcess` bring it to READY, at which point
the pool is woken and queued requests proceed. It hands out ports and disjoint device sets,
applies reload diffs (new engines before old ones leave), and reports status.

While engines come up it logs (logger "gateway.engines") one line per state change, every
`progress_interval` seconds which engines are still loading and for how long, and one
summary line when none is starting any more.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import TYPE_CHECKING, Any

import aiohttp

from ..config import EnginesConfig, GatewayConfig, PoolConfig, SpawnConfig
from ..routing.backend import Backend, BackendState
from ..routing.pool import Pool
from . import diff, endpoints
from .endpoints import EndpointProbe
from .gpus import GpuInventory, GpusExhausted
from .logs import log_file_name
from .ports import PortAllocator, PortsExhausted
from .process import PARKED, EngineProcess
from .residency import Residency

if TYPE_CHECKING:
    from ..state import GatewayState

log = logging.getLogger("gateway.engines")
S = BackendState


class Supervisor:
    progress_interval = 5.0

    def __init__(self, state: GatewayState) -> None:
        self.state = state
        ecfg = state.config.engines
        self.settings: EnginesConfig = ecfg
        self.gpus = _inventory(state.config)
        self.ports = PortAllocator(*ecfg.port_range)
        self.residency = Residency(self)
        self._residency_task: asyncio.Task[None] | None = None
        self.engines: list[EngineProcess] = []
        self.probes: dict[str, EndpointProbe] = {}
        self._pool_of: dict[EngineProcess, Pool] = {}
        self._seq: dict[tuple[str, str], int] = {}
        self._changed = asyncio.Event()
        self._session: aiohttp.ClientSession | None = None
        self._tasks: set[asyncio.Task[Any]] = set()
        self._progress: asyncio.Task[None] | None = None
        self._batch_started: float | None = None
        self._stopping = False

    # --- lifecycle (called by the app's lifespan) ---

    async def start(self) -> None:
        """Begin spawning every configured engine and probing endpoints; returns at once.

        Engines with `start: on_demand` are created parked (STOPPED) and started by the
        residency coordinator when a request needs them."""
        self._attach_demand()
        self._residency_task = asyncio.get_running_loop().create_task(self.residency.run(), name="residency")
        for name, pcfg in self.state.config.pools.items():
            for spec in pcfg.spawn:
                for _ in range(spec.replicas):
                    try:
                        self._create(name, pcfg, spec)
                    except (GpusExhausted, PortsExhausted) as e:
                        log.error("%s: cannot start a %s engine: %s", name, spec.engine, e)
        await self._sync_probes()

    async def wait_ready(self, timeout: float | None = None) -> bool:  # noqa: ASYNC109
        """Wait until every live spawned engine has finished a start attempt (READY or FAILED).

        True when all of them are READY; False if any failed or `timeout` passed first.
        Parked on-demand engines count as settled (nothing is asked of them yet).
        """
        try:
            await asyncio.wait_for(
                self._wait(lambda: all(e.attempted or e.state in PARKED for e in self._live())), timeout
            )
        except TimeoutError:
            return False
        return all(e.state is S.READY or e.state in PARKED for e in self._live())

    async def stop(self) -> None:
        """Stop every engine concurrently (group SIGTERM, grace, SIGKILL) and every probe."""
        self._stopping = True
        for t in [*self._tasks, self._progress, self._residency_task]:
            if t is not None:
                t.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        await asyncio.gather(*(p.stop() for p in self.probes.values()))
        self.probes.clear()
        await asyncio.gather(*(self._stop_engine(e, "gateway shutdown") for e in list(self.engines)))
        if self._session is not None:
            await self._session.close()
            self._session = None

    # --- reload ---

    async def apply(self, new_cfg: GatewayConfig) -> dict[str, list[str]]:
        """Make the spawned engines match `new_cfg` (pools must already exist in state.pools).

        Returns at once with what was started/drained; new engines join when READY and the
        engines they replace are drained only after that (new before old).
        """
        self._update_settings(new_cfg)
        summary: dict[str, list[str]] = {"added": [], "removed": [], "changed": []}
        drains: list[asyncio.Task[Any]] = []
        deferred: list[tuple[str, SpawnConfig]] = []
        self._attach_demand()
        running = self._live()
        for name, plan in diff.plan(running, new_cfg).items():
            pcfg = new_cfg.pools.get(name)
            for e in plan.surplus:
                summary["removed"].append(e.id)
                drains.append(self._background(self._retire(e, "replica removed by reload")))
            started: list[str] = []
            for spec in plan.start:
                assert pcfg is not None
                try:
                    started.append(self._create(name, pcfg, spec).id)
                except GpusExhausted:
                    deferred.append((name, spec))  # devices free up once old engines stop
            summary["added"] += started
            # New before old: the replaced engines leave once the pool's new engines are READY.
            # Starts deferred for lack of devices come after that (they need the old devices).
            wait = bool(started)
            for e in plan.replaced:
                e.retiring = True
                if started or any(n == name for n, _ in deferred):
                    summary["changed"].append(f"{e.id} -> {', '.join(started) or '(after it stops)'}")
                else:
                    summary["removed"].append(e.id)
                why = "replaced by reload" if pcfg is not None and pcfg.spawn else "removed by reload"
                drains.append(self._background(self._retire(e, why, after_pool_ready=name if wait else None)))
            if pcfg is not None:  # kept engines restart with the pool's current settings
                for e in self.engines:
                    if e.pool_name == name and not e.retiring:
                        e.pool_cfg = pcfg
        if deferred:
            self._background(self._start_deferred(deferred, drains))
            summary["added"] += [f"{n}/{s.engine} (after devices free up)" for n, s in deferred]
        await self._sync_probes()
        return summary

    def _update_settings(self, cfg: GatewayConfig) -> None:
        ecfg = cfg.engines
        if ecfg.gpus != self.settings.gpus or _pinned(cfg) != self.gpus.pinned:
            self.gpus = _inventory(cfg)
            for e in self.engines:
                if not e.spec.devices:
                    self.gpus.claim(tuple(d for d in e.devices if d in ecfg.gpus), e.id)
        if tuple(ecfg.port_range) != tuple(self.settings.port_range):
            self.ports = PortAllocator(*ecfg.port_range)
            for e in self.engines:
                self.ports.hold(e.port)
                e.ports = self.ports
        for e in self.engines:
            e.engines = ecfg
        self.settings = ecfg

    async def _retire(self, e: EngineProcess, reason: str, after_pool_ready: str | None = None) -> None:
        """Leave routing, let in-flight requests finish (up to drain_seconds), then stop."""
        if after_pool_ready is not None:
            name = after_pool_ready
            await self._wait(
                lambda: all(x.state is S.READY or x.state in PARKED for x in self._live() if x.pool_name == name)
            )
        e.retiring = True
        e.drain(reason)
        pool = self._pool_of.get(e)
        if pool is not None:
            pool.remove(e.backend)
        deadline = time.monotonic() + self.state.config.server.drain_seconds
        # Pool.release has no per-backend event; a 50 ms poll is cheap and bounded.
        while e.backend.outstanding > 0 and time.monotonic() < deadline:  # noqa: ASYNC110
            await asyncio.sleep(0.05)
        await self._stop_engine(e, reason)

    async def _start_deferred(
        self, deferred: list[tuple[str, SpawnConfig]], drains: list[asyncio.Task[Any]]
    ) -> None:
        await asyncio.gather(*drains, return_exceptions=True)
        for name, spec in deferred:
            pcfg = self.state.config.pools.get(name)
            if pcfg is None:
                continue
            try:
                self._create(name, pcfg, spec)
            except (GpusExhausted, PortsExhausted) as e:
                log.error("%s: cannot start a %s engine after reload: %s", name, spec.engine, e)

    # --- engines ---

    def _create(self, pool_name: str, pcfg: PoolConfig, spec: SpawnConfig) -> EngineProcess:
        seq = self._seq.get((pool_name, spec.engine), 0)
        backend_id = f"{pool_name}/{spec.engine}-{seq}"
        # Pinned devices are shared by on-demand engines, which take turns (residency).
        devices = tuple(spec.devices) if spec.devices else self.gpus.allocate(spec.gpus_per_replica, backend_id)
        try:
            port = self.ports.allocate()
        except PortsExhausted:
            self.gpus.release(backend_id)
            raise
        self._seq[(pool_name, spec.engine)] = seq + 1  # ids are never reused, even across reloads
        pool = self.state.pools[pool_name]
        backend = Backend(
            id=backend_id,
            pool=pool_name,
            url="",
            max_concurrency=pcfg.max_concurrency,
            api_key=spec.api_key or pcfg.api_key,
            source="spawned",
            state=S.STOPPED if spec.on_demand else S.STARTING,
        )
        e = EngineProcess(
            backend,
            pcfg,
            spec,
            port,
            devices,
            self.settings,
            self.ports,
            self.session,
            self._on_change,
            Path(self.settings.log_dir) / log_file_name(backend_id),
        )
        e.key = diff.spec_key(pcfg, spec)
        self.engines.append(e)
        self._pool_of[e] = pool
        pool.add(backend)
        if not spec.on_demand:
            self._on_change(e, S.STARTING, S.STARTING)  # a new engine is starting: progress view
        e.start()
        return e

    async def _stop_engine(self, e: EngineProcess, reason: str) -> None:
        pool = self._pool_of.get(e)
        if pool is not None:
            pool.remove(e.backend)
        await e.stop(reason)
        self.gpus.release(e.id)
        if e in self.engines:
            self.engines.remove(e)
        self._pool_of.pop(e, None)
        self._pulse()

    def _live(self) -> list[EngineProcess]:
        """Engines that belong to the current config: serving, starting, or parked."""
        return [e for e in self.engines if not e.retiring and not e.ended]

    def live(self) -> list[EngineProcess]:
        return self._live()

    def _attach_demand(self) -> None:
        for pool in self.state.pools.values():
            pool.demand = self.residency

    def session(self) -> aiohttp.ClientSession:
        # Probes get their own small pool: they must never queue behind proxied traffic.
        if self._session is None or self._session.closed:
            self._session = aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(limit=100, force_close=True),
                timeout=aiohttp.ClientTimeout(total=30),
            )
        return self._session

    # --- endpoint probes ---

    async def _sync_probes(self) -> None:
        want = {
            b.id: (b, pool)
            for pool in self.state.pools.values()
            for b in pool.backends
            if b.source != "spawned"
        }
        hcfg = self.settings.endpoint_health
        stale = [
            bid
            for bid, p in self.probes.items()
            if bid not in want or p.backend is not want[bid][0] or p.cfg != hcfg
        ]
        await asyncio.gather(*(self.probes.pop(bid).stop() for bid in stale))
        for bid, (b, pool) in want.items():
            if bid not in self.probes:
                probe = self.probes[bid] = EndpointProbe(b, pool, hcfg, self.session, self._pulse)
                probe.start()

    # --- change notification and the start-up view ---

    def _on_change(self, e: EngineProcess, old: BackendState, new: BackendState) -> None:
        if new is S.READY or e.backend.refusal is not None:
            pool = self._pool_of.get(e)
            if pool is not None:
                pool.wake()  # queued requests proceed now, or learn at once that none will
            metrics = self.state.metrics
            if metrics is not None and old is S.STARTING and e.last_load is not None:
                metrics.engine_loaded(e.pool_name, e.last_load)
            elif metrics is not None and old is S.WAKING and e.last_wake is not None:
                metrics.engine_woken(e.pool_name, e.last_wake)
        if new is S.FAILED:
            self.residency.start_failed(e)  # requests waiting for it are answered now
        if new is S.STARTING and not self._stopping:
            if self._batch_started is None:
                self._batch_started = time.monotonic()
            if self._progress is None or self._progress.done():
                self._progress = asyncio.get_running_loop().create_task(self._report_progress())
        elif old is S.STARTING and self._batch_started is not None and not self._stopping:
            if not any(x.state is S.STARTING for x in self.engines):
                self._summary()
        self._pulse()

    def _pulse(self) -> None:
        self._changed.set()
        self._changed = asyncio.Event()

    def pulse(self) -> None:
        self._pulse()

    def changed_event(self) -> asyncio.Event:
        """Set at the next engine state change (take it before checking, then wait)."""
        return self._changed

    async def _wait(self, predicate: Callable[[], bool]) -> None:
        while True:
            event = self._changed  # taken before the check: a change in between is not lost
            if predicate():
                return
            await event.wait()

    async def _report_progress(self) -> None:
        while True:
            await asyncio.sleep(self.progress_interval)
            now = time.monotonic()
            loading = [e for e in self.engines if e.state is S.STARTING]
            if not loading:
                return
            log.info(
                "waiting for %d engine(s): %s",
                len(loading),
                ", ".join(f"{e.id} loading for {now - (e.started_at or e.created):.0f}s" for e in loading),
            )

    def _summary(self) -> None:
        took = time.monotonic() - (self._batch_started or time.monotonic())
        self._batch_started = None
        live = self._live()
        ready = [e for e in live if e.state is S.READY]
        others = [f"{e.id} {e.state}" for e in live if e.state is not S.READY]
        log.info(
            "engines settled after %.1fs: %d/%d ready%s",
            took,
            len(ready),
            len(live),
            ("; not ready: " + ", ".join(others)) if others else "",
        )

    def _background(self, coro: Coroutine[Any, Any, Any]) -> asyncio.Task[Any]:
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    # --- reporting ---

    def status(self) -> list[dict[str, Any]]:
        """One row per backend: spawned engines (draining ones included) and external endpoints."""
        rows: list[dict[str, Any]] = []
        now = time.monotonic()
        listed: set[EngineProcess] = set()
        for pool in self.state.pools.values():
            for b in pool.backends:
                e = next((x for x in self.engines if x.backend is b), None)
                if e is not None:
                    row = e.status()
                    # A resident on shared devices: the least time it keeps them once READY.
                    turn = self.residency.shown_turn(e)
                    row["turn_seconds"] = None if turn is None else round(turn, 2)
                    rows.append(row)
                    listed.add(e)
                    continue
                probe = self.probes.get(b.id)
                since = probe.ready_since if probe is not None else None
                uptime = round(now - since, 1) if since is not None and b.state is S.READY else None
                rows.append(endpoints.status_row(b, uptime))
        rows += [e.status() for e in self.engines if e not in listed]
        return rows

    def logs(self, backend_id: str, lines: int = 200) -> list[str] | None:
        """The last lines of a spawned engine's output; None if no such engine."""
        e = self.find(backend_id)
        return None if e is None else e.log.tail(lines)

    def swaps(self) -> dict[str, int]:
        return dict(self.residency.swaps)

    def find(self, backend_id: str) -> EngineProcess | None:
        return next((e for e in self.engines if e.id == backend_id), None)


def _pinned(cfg: GatewayConfig) -> frozenset[str]:
    return frozenset(d for p in cfg.pools.values() for s in p.spawn for d in (s.devices or []))


def _inventory(cfg: GatewayConfig) -> GpuInventory:
    """The allocator for unpinned replicas: pinned devices are never handed out."""
    inv = GpuInventory(cfg.engines.gpus)
    inv.pin(_pinned(cfg))
    return inv
