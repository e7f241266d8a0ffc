"""One spawned engine: its state machine, its OS process, and the loop that keeps it running.

States are `BackendState`, the same field the router reads, so "routable" is exactly
"this process is READY". Every change goes through `transition`, which checks the table
below, logs one line, records the change and tells the supervisor:

    STARTING   -> READY | FAILED | STOPPED          (spawned, waiting for health + /v1/models)
    READY      -> UNHEALTHY | RESTARTING | DRAINING | STOPPED
    UNHEALTHY  -> READY | RESTARTING | DRAINING | STOPPED
    RESTARTING -> STARTING | STOPPED                (exited while serving; backoff pending)
    FAILED     -> STARTING | STOPPED                (a start attempt failed; backoff pending)
    DRAINING   -> STOPPED                           (removed by a reload; finishing requests)
    STOPPED    -> (terminal)

The process runs in its own session (so stop signals reach the engine's workers too) with
PR_SET_PDEATHSIG=SIGKILL, so a gateway killed with -9 does not leave an engine holding
GPUs. That signal fires when the spawning *thread* exits: spawn from the event loop's thread.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp

from ..config import EnginesConfig, PoolConfig, SpawnConfig
from ..routing.backend import Backend, BackendState
from . import health, launchers
from .discovery import discover
from .launchers import Launch, LaunchError
from .logs import EngineLog
from .osproc import child_setup, describe_exit, signal_group
from .ports import PortAllocator, PortsExhausted

log = logging.getLogger("gateway.engines")

S = BackendState
ALLOWED: dict[BackendState, frozenset[BackendState]] = {
    S.STARTING: frozenset({S.READY, S.FAILED, S.STOPPED}),
    S.READY: frozenset({S.UNHEALTHY, S.RESTARTING, S.DRAINING, S.STOPPED}),
    S.UNHEALTHY: frozenset({S.READY, S.RESTARTING, S.DRAINING, S.STOPPED}),
    S.RESTARTING: frozenset({S.STARTING, S.STOPPED}),
    S.FAILED: frozenset({S.STARTING, S.STOPPED}),
    S.DRAINING: frozenset({S.STOPPED}),
    S.STOPPED: frozenset(),
}
TAIL_IN_ERRORS = 20


class InvalidTransition(RuntimeError):
    pass


@dataclass(frozen=True)
class Transition:
    at: float  # time.time()
    old: BackendState
    new: BackendState
    reason: str


OnChange = Callable[["EngineProcess", BackendState, BackendState], None]


class EngineProcess:
    def __init__(
        self,
        backend: Backend,
        pool_cfg: PoolConfig,
        spec: SpawnConfig,
        port: int,
        devices: tuple[str, ...],
        engines: EnginesConfig,
        ports: PortAllocator,
        session: Callable[[], aiohttp.ClientSession],
        on_change: OnChange,
        log_path: Path | None,
    ) -> None:
        self.backend = backend
        self.pool_cfg = pool_cfg
        self.spec = spec
        self.devices = devices
        self.engines = engines  # replaced by the supervisor on reload (backoff, grace)
        self.ports = ports
        self.port = port
        backend.url = f"http://127.0.0.1:{port}/v1"
        self._session = session
        self._on_change = on_change
        self.log = EngineLog(log_path, engines.log_max_bytes, engines.log_backups)
        self.history: deque[Transition] = deque(maxlen=200)
        self.attempted = False  # finished at least one start attempt (READY or FAILED)
        self.created = time.monotonic()
        self.started_at: float | None = None  # monotonic, current process
        self.ready_since: float | None = None
        self.retiring = False  # replaced by a reload; drained once its successor is READY
        self.key = ""  # identity of its launch-shaping spec (diff.spec_key), set by the supervisor
        self.launch: Launch | None = None
        self.proc: asyncio.subprocess.Process | None = None
        self._spawning: asyncio.Future[None] | None = None
        self._pump: asyncio.Task[None] | None = None
        self._task: asyncio.Task[None] | None = None
        self._restart_now: asyncio.Future[str] | None = None
        self._unhealthy_timer: asyncio.TimerHandle | None = None

    @property
    def id(self) -> str:
        return self.backend.id

    @property
    def pool_name(self) -> str:
        return self.backend.pool

    @property
    def state(self) -> BackendState:
        return self.backend.state

    @property
    def restarts(self) -> int:
        # Kept on the backend, where /metrics reads it.
        return self.backend.restarts

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc is not None and self.proc.returncode is None else None

    # --- the one transition function ---

    def transition(self, new: BackendState, reason: str = "") -> None:
        old = self.backend.state
        if new not in ALLOWED[old]:
            raise InvalidTransition(f"{self.id}: {old} -> {new} is not allowed ({reason})")
        self.backend.state = new
        self.history.append(Transition(time.time(), old, new, reason))
        now = time.monotonic()
        if new is S.READY:
            self.ready_since = now
            self.attempted = True
        elif new is S.FAILED:
            self.attempted = True
        elif new not in (S.UNHEALTHY, S.DRAINING):  # uptime counts from the last READY
            self.ready_since = None
        took = f" after {now - self.started_at:.1f}s" if new is S.READY and self.started_at else ""
        first_line = reason.splitlines()[0] if reason else ""
        detail = f" ({first_line})" if first_line else ""
        level = logging.WARNING if new in (S.FAILED, S.RESTARTING, S.UNHEALTHY) else logging.INFO
        log.log(level, "%s: %s -> %s%s%s", self.id, old, new, took, detail)
        self._on_change(self, old, new)

    # --- lifecycle ---

    def start(self) -> None:
        """Begin the spawn/watch/restart loop in the background; returns at once."""
        self._task = asyncio.get_running_loop().create_task(self._run(), name=f"engine {self.id}")

    async def _run(self) -> None:
        try:
            await self._loop()
        except Exception as e:  # a bug here must be visible, not a silently dead engine
            log.exception("%s: supervision loop crashed", self.id)
            self.backend.last_error = f"supervision loop crashed: {e!r}"
            if S.FAILED in ALLOWED[self.state]:
                self.transition(S.FAILED, self.backend.last_error)

    async def _loop(self) -> None:
        failures = 0  # consecutive, for backoff; reset by a stable run
        while True:
            if self.state is not S.STARTING:
                self.backend.restarts += 1
                self.transition(S.STARTING, f"restart #{self.restarts}")
            try:
                problem = await self._start_once()
            except LaunchError as e:  # the spec itself is wrong: retrying cannot help
                self.backend.last_error = str(e)
                self.transition(S.FAILED, str(e))
                return
            if problem is not None:
                failures += 1
                self.backend.last_error = problem
                self.transition(S.FAILED, problem)
                await self._kill_group()
                await asyncio.sleep(self._backoff(failures))
                continue
            self.transition(S.READY, f"pid {self.pid}, {self.backend.url}")
            reason = await self._watch()
            if self.state is S.DRAINING:
                # Removed by a reload and it died while draining: nothing to bring back.
                self.transition(S.STOPPED, reason)
                await self._kill_group()
                return
            stable = self.ready_since is not None and time.monotonic() - self.ready_since >= (
                self.engines.restart_stable_seconds
            )
            failures = 1 if stable else failures + 1
            self.backend.last_error = reason
            self.transition(S.RESTARTING, reason)
            await self._terminate()
            await asyncio.sleep(self._backoff(failures))

    def _backoff(self, failures: int) -> float:
        e = self.engines
        return float(min(e.restart_backoff_initial * 2 ** max(0, failures - 1), e.restart_backoff_max))

    def _build_launch(self) -> Launch:
        req = launchers.request_for(
            self.backend.pool, self.pool_cfg, self.spec, self.engines, self.port, self.devices
        )
        return launchers.build(req)

    async def _start_once(self) -> str | None:
        """Spawn and wait for readiness. None when READY, else what went wrong (with output)."""
        try:
            if self.restarts:
                self._set_port(self.ports.renew(self.port))
        except PortsExhausted as e:
            return str(e)
        self.launch = launch = self._build_launch()
        self.backend.served_model = launch.served_names[0]
        self.backend.api_key = launch.api_key
        await self.log.note(f"start: {' '.join(launch.display_argv())}")
        try:
            self._spawning = asyncio.ensure_future(self._spawn(launch))
            await asyncio.shield(self._spawning)
        except OSError as e:
            await self.log.note(f"cannot start: {e}")
            return f"cannot start {launch.argv[0]!r}: {e.strerror or e}"
        assert self.proc is not None
        await self.log.note(f"pid {self.proc.pid}, port {self.port}, devices {','.join(self.devices) or '-'}")
        ready = asyncio.ensure_future(
            health.wait_ready(
                self._session(), self._target(), launch.served_names[0], self.spec.startup_timeout
            )
        )
        exited = asyncio.ensure_future(self.proc.wait())
        try:
            await asyncio.wait({ready, exited}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            ready.cancel()
            exited.cancel()
        if exited.done() and not exited.cancelled():
            await self._drain_output()
            return self._with_tail(f"{describe_exit(self.proc.returncode)} during start-up")
        exc = ready.exception()
        if exc is not None:
            return self._with_tail(str(exc))
        # The context length goes on the gateway's own /v1/models cards (bench tools read it).
        await discover(self._session(), self.backend)
        return None

    async def _spawn(self, launch: Launch) -> None:
        self.proc = await asyncio.create_subprocess_exec(
            *launch.argv,
            env=launch.env,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT,
            start_new_session=True,
            preexec_fn=child_setup(os.getpid()),
        )
        self.started_at = time.monotonic()
        assert self.proc.stdout is not None
        self._pump = asyncio.ensure_future(self.log.pump(self.proc.stdout))

    async def _watch(self) -> str:
        """Probe until the process exits or stays unhealthy too long; returns why."""
        assert self.proc is not None
        loop = asyncio.get_running_loop()
        self._restart_now = loop.create_future()
        exited = asyncio.ensure_future(self.proc.wait())
        probes = asyncio.ensure_future(
            health.monitor(self._session(), self._target(), self.backend, self.spec.health, self._on_verdict)
        )
        try:
            await asyncio.wait({exited, probes, self._restart_now}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for f in (exited, probes, self._restart_now):
                f.cancel()
            self._cancel_unhealthy_timer()
        if exited.done() and not exited.cancelled():
            await self._drain_output()
            return self._with_tail(describe_exit(self.proc.returncode))
        if self._restart_now.done() and not self._restart_now.cancelled():
            return self._restart_now.result()
        probes.result()  # re-raise a bug in the monitor rather than loop silently
        return "health monitor ended"

    def _on_verdict(self, ok: bool, detail: str) -> None:
        if self.state is S.READY and not ok:
            self.backend.last_error = f"health check failing: {detail}"
            self.transition(S.UNHEALTHY, detail)
            after = self.spec.health.restart_after
            if after is not None:
                self._unhealthy_timer = asyncio.get_running_loop().call_later(
                    after, self._request_restart, f"unhealthy for {after:g}s ({detail})"
                )
        elif self.state is S.UNHEALTHY and ok:
            self._cancel_unhealthy_timer()
            self.transition(S.READY, "health check passing again")

    def _request_restart(self, reason: str) -> None:
        if self._restart_now is not None and not self._restart_now.done() and self.state is S.UNHEALTHY:
            self._restart_now.set_result(reason)

    def _cancel_unhealthy_timer(self) -> None:
        if self._unhealthy_timer is not None:
            self._unhealthy_timer.cancel()
            self._unhealthy_timer = None

    def _target(self) -> health.ProbeTarget:
        assert self.launch is not None
        root = f"http://127.0.0.1:{self.port}"
        return health.ProbeTarget(
            health_url=root + self.launch.health_path,
            models_url=root + "/v1/models",
            headers=health.auth_headers(self.launch.api_key),
            metrics_url=root + "/metrics" if self.launch.metric_running else None,
            metric_running=self.launch.metric_running,
            metric_waiting=self.launch.metric_waiting,
        )

    def _set_port(self, port: int) -> None:
        self.port = port
        self.backend.url = f"http://127.0.0.1:{port}/v1"

    def _with_tail(self, message: str) -> str:
        tail = [line for line in self.log.tail(TAIL_IN_ERRORS) if not line.startswith("[gateway ")]
        if not tail:
            return message + " (no output)"
        # First line stands alone (it is what the transition log shows); the output follows.
        return message + "\nlast output:\n" + "\n".join("  " + line for line in tail)

    async def _drain_output(self) -> None:
        # The dying engine's last words (the traceback) are what the operator needs.
        if self._pump is not None:
            with contextlib.suppress(TimeoutError, asyncio.CancelledError):
                await asyncio.wait_for(asyncio.shield(self._pump), 1.0)
        self.log.flush_partial()

    # --- stopping ---

    def drain(self, reason: str) -> None:
        """Leave routing now (the caller removes it from the pool); the process keeps serving."""
        if self.state in (S.READY, S.UNHEALTHY):
            self.transition(S.DRAINING, reason)

    async def stop(self, reason: str = "stopped") -> None:
        """Stop the loop, then the process group (SIGTERM, grace, SIGKILL). Idempotent."""
        if self._task is not None and not self._task.done():
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
        if self._spawning is not None and not self._spawning.done():
            await asyncio.gather(self._spawning, return_exceptions=True)
        self._cancel_unhealthy_timer()
        await self._terminate()
        if self._pump is not None and not self._pump.done():
            self._pump.cancel()
            await asyncio.gather(self._pump, return_exceptions=True)
        if self.state is not S.STOPPED:
            self.transition(S.STOPPED, reason)
        self.ports.release(self.port)

    async def _terminate(self) -> None:
        proc = self.proc
        if proc is None:
            return
        grace = self.engines.stop_grace_seconds
        deadline = time.monotonic() + grace
        if proc.returncode is None:
            signal_group(proc.pid, signal.SIGTERM)
            try:
                await asyncio.wait_for(proc.wait(), grace)
            except TimeoutError:
                await self.log.note(f"no exit {grace:g}s after SIGTERM: SIGKILL")
                signal_group(proc.pid, signal.SIGKILL)
                await proc.wait()
            await self.log.note(f"stopped (exit code {proc.returncode})")
        # Workers the engine forked share its group: give them the rest of the grace, then kill.
        # No event tells us a group emptied: poll (50 ms) for at most the grace period.
        while signal_group(proc.pid, 0) and time.monotonic() < deadline:  # noqa: ASYNC110
            await asyncio.sleep(0.05)
        signal_group(proc.pid, signal.SIGKILL)
        await self._drain_output()

    async def _kill_group(self) -> None:
        """After a failed start or crash: nothing of the old process may keep the port or devices."""
        proc = self.proc
        if proc is None:
            return
        signal_group(proc.pid, signal.SIGKILL)
        if proc.returncode is None:
            await proc.wait()

    # --- reporting ---

    def status(self) -> dict[str, Any]:
        now = time.monotonic()
        return {
            "pool": self.backend.pool,
            "id": self.id,
            "engine": self.spec.engine,
            "source": self.backend.source,
            "state": str(self.state),
            "pid": self.pid,
            "port": self.port,
            "url": self.backend.url,
            "devices": ",".join(self.devices),
            "outstanding": self.backend.outstanding,
            "restarts": self.restarts,
            "last_error": self.backend.last_error,
            "uptime": round(now - self.ready_since, 1) if self.ready_since is not None else None,
            "starting_for": round(now - self.started_at, 1)
            if self.state is S.STARTING and self.started_at is not None
            else None,
            "served_model": self.backend.served_model,
            "argv": self.launch.display_argv() if self.launch else None,
        }
