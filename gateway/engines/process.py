"""One spawned engine: its state machine, its OS process, and the loop that keeps it running.

States are `BackendState`, the same field the router reads, so "routable" is exactly
"this process is READY". Every change goes through `transition`, which checks the table
below, logs one line, records the change and tells the supervisor:

    STOPPED    -> STARTING                      (on demand: a request needs it; never started or parked)
    STARTING   -> READY | FAILED | STOPPED      (spawned, waiting for health + /v1/models)
    READY      -> UNHEALTHY | RESTARTING | DRAINING | STOPPED
    UNHEALTHY  -> READY | RESTARTING | DRAINING | STOPPED
    RESTARTING -> STARTING | STOPPED            (exited while serving, or a wake failed; backoff pending)
    FAILED     -> STARTING | STOPPED            (a start attempt failed; backoff pending, or, on
                                                 demand, the next request after the backoff)
    DRAINING   -> STOPPED | SLEEPING            (removed by a reload, idle, or swapped out; finishing requests)
    SLEEPING   -> WAKING | STOPPED              (vLLM sleep mode: process up, device memory released)
    WAKING     -> READY | RESTARTING | STOPPED  (a failed wake restarts the process)

STOPPED is final for an engine the supervisor stopped (`ended`); an engine parked by the
residency coordinator (idle, swapped out, or on-demand and never started) waits in STOPPED
or SLEEPING for `activate`. `park` and `activate` change state at once (so the router and
the coordinator see it in the same instant) and hand the slow part to the engine's loop.

An engine started by requests (`start: on_demand`, or any with an `idle_timeout`) whose
start fails waits in FAILED for `activate` too: its process is gone, so it holds no device,
and the supervisor answers the requests waiting for it at once instead of letting them
wait out the start-up budget; the first request after `retry_at` (exponential backoff)
starts it again, so a broken engine is not relaunched per request. Other engines retry on
their own after the backoff, as before.

The process runs in its own session (so stop signals reach the engine's workers too) with
PR_SET_PDEATHSIG=SIGKILL, so a gateway killed with -9 does not leave an engine holding
GPUs. That signal fires when the spawning *thread* exits: spawn from the event loop's thread.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import os
import signal
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import orjson

from ..config import EnginesConfig, PoolConfig, SpawnConfig
from ..proxy.engine_errors import UPSTREAM_AUTH_FAILED, upstream_auth_message
from ..routing.backend import Backend, BackendState, Refusal
from . import health, launchers, sleepmode
from .discovery import learn
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
    S.DRAINING: frozenset({S.STOPPED, S.SLEEPING}),
    S.SLEEPING: frozenset({S.WAKING, S.STOPPED}),
    S.WAKING: frozenset({S.READY, S.RESTARTING, S.STOPPED}),
    S.STOPPED: frozenset({S.STARTING}),
}
PARKED = (S.STOPPED, S.SLEEPING)
TAIL_IN_ERRORS = 20
# In a failed start's output: the engine does not support sleep mode (vLLM's ModelConfig).
SLEEP_REFUSED = "sleep mode is not supported"
# How often a running engine's exit is checked (see exit_of): a dead engine refuses connections,
# so this bounds how long it is still counted ready.
EXIT_POLL = 0.1


class InvalidTransition(RuntimeError):
    pass


@dataclass(frozen=True)
class Park:
    """Leave the device: drain, then sleep (when the engine can) or stop."""

    reason: str
    drain_seconds: float


@dataclass(frozen=True)
class Transition:
    at: float  # time.time()
    old: BackendState
    new: BackendState
    reason: str


OnChange = Callable[["EngineProcess", BackendState, BackendState], None]


async def exit_of(proc: asyncio.subprocess.Process) -> int:
    """The process's exit code, as soon as it exits.

    Not `proc.wait()`: in asyncio that returns only once every pipe is closed too, and an
    engine's children inherit its stdout. vLLM's EngineCore outlives a SIGKILLed API
    server for seconds (or for good), and the exit went unseen meanwhile: the engine
    stayed READY while refusing connections. `returncode` is set at the exit itself."""
    # No public event for "exited, pipes still open": poll (cheap: one attribute read).
    while proc.returncode is None:  # noqa: ASYNC110
        await asyncio.sleep(EXIT_POLL)
    return proc.returncode

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
        self._wake_began: float | None = None
        self.retiring = False  # replaced by a reload; drained once its successor is READY
        self.key = ""  # identity of its launch-shaping spec (diff.spec_key), set by the supervisor
        self.launch: Launch | None = None
        self.proc: asyncio.subprocess.Process | None = None
        self._spawning: asyncio.Future[None] | None = None
        self._pump: asyncio.Task[None] | None = None
        self._task: asyncio.Task[None] | None = None
        self._interrupt: asyncio.Future[str | Park] | None = None
        self._activated = asyncio.Event()
        self.ended = False  # stopped by the supervisor: never starts again
        self.sleep_level = spec.sleep  # 0 once the engine refused to sleep: stop instead
        self._slept_at_level = 0  # the level of the current sleep: decides how to wake
        self.parked_at: float | None = None  # monotonic, when it last left the device
        self.failures = 0  # consecutive failed starts or unstable runs, for the backoff
        # Started by requests and its start failed: the monotonic time from which a request
        # may try again (inf: the spec itself is wrong). None while no such failure stands.
        self.retry_at: float | None = None
        # Timings of the last cold load and wake (seconds), read by the supervisor's metrics.
        self.last_load: float | None = None
        self.last_wake: float | None = None
        self.last_park: float | None = None  # its last sleep or stop, after the drain
        self._unhealthy_timer: asyncio.TimerHandle | None = None

    @property
    def demand_started(self) -> bool:
        """Started by requests (on demand, or again after an idle stop), not by the supervisor."""
        return self.spec.on_demand or self.spec.idle_timeout is not None

    @property
    def parked(self) -> bool:
        """Off its devices and waiting for `activate`: stopped, asleep, or a failed start."""
        return self.state in PARKED or (self.state is S.FAILED and self.retry_at is not None)

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
        if new in PARKED:
            self.parked_at = now
        took = ""
        if new is S.READY and old is S.STARTING and self.started_at:
            self.last_load = now - self.started_at
            took = f" after {self.last_load:.1f}s"
        elif new is S.READY and old is S.WAKING and self._wake_began is not None:
            self.last_wake = now - self._wake_began
            took = f" after {self.last_wake:.2f}s"
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
        while True:
            if self.state is S.STOPPED or (self.state is S.FAILED and self.retry_at is not None):
                await self._activated.wait()  # parked, or a failed start: until a request needs it
            self._activated.clear()
            if self.state is not S.STARTING:
                self.backend.restarts += 1
                self.transition(S.STARTING, f"restart #{self.restarts}")
            try:
                problem = await self._start_once()
            except LaunchError as e:  # the spec itself is wrong: retrying cannot help
                self.backend.last_error = str(e)
                self.retry_at = math.inf if self.demand_started else None
                self.transition(S.FAILED, str(e))
                return
            except health.KeyRejected as e:
                # Neither can a restart (minutes of loading for another 401): fail for good,
                # free the memory, and answer the pool's requests with the reason at once.
                await self._kill_group()
                self.backend.refusal = Refusal(502, UPSTREAM_AUTH_FAILED, upstream_auth_message(e.status, e.body))
                self.backend.last_error = str(e)
                log.error("%s: %s", self.id, e)
                await self.log.note(str(e))
                self.transition(S.FAILED, str(e))
                return
            if problem is not None:
                self.backend.last_error = problem
                # Before FAILED: a failed engine must hold nothing (port, device) once it says so.
                await self._kill_group()
                if self.sleep_level and SLEEP_REFUSED in "\n".join(self.log.tail(200)).lower():
                    # vLLM's CPU build refuses --enable-sleep-mode at start ("Sleep mode is
                    # not supported on current platform"): run without it, stop when idle.
                    log.warning("%s: the engine refused sleep mode; starting it without", self.id)
                    await self.log.note("the engine refused sleep mode: starting without it, stopping when idle")
                    self.sleep_level = 0
                    self.transition(S.FAILED, problem)
                    continue  # straight back to STARTING (no await in between: nobody sees it FAILED)
                self.failures += 1
                backoff = self._backoff(self.failures)
                if self.demand_started:
                    self.retry_at = time.monotonic() + backoff
                    await self.log.note(f"start failed: a request may start it again in {backoff:g}s")
                self.transition(S.FAILED, problem)
                if not self.demand_started:
                    await asyncio.sleep(backoff)
                continue
            self.transition(S.READY, f"pid {self.pid}, {self.backend.url}")
            reason = await self._serve()
            if reason is None:  # parked in STOPPED: wait for the next activation
                self.failures = 0
                continue
            if self.state is S.DRAINING:
                # Removed by a reload and it died while draining: nothing to bring back.
                self.transition(S.STOPPED, reason)
                await self._kill_group()
                return
            stable = self.ready_since is not None and time.monotonic() - self.ready_since >= (
                self.engines.restart_stable_seconds
            )
            self.failures = 1 if stable or self.state is S.WAKING else self.failures + 1
            self.backend.last_error = reason
            self.transition(S.RESTARTING, reason)
            await self._terminate()
            await asyncio.sleep(self._backoff(self.failures))

    async def _serve(self) -> str | None:
        """Watch a READY engine through its sleeps and wakes.

        Returns why it must restart, or None once it is parked in STOPPED.
        """
        while True:
            outcome = await self._watch()
            if isinstance(outcome, str):
                return outcome
            await self._drain_requests(outcome)
            parking = time.monotonic()
            if self.sleep_level:
                problem = await self._sleep()
                if problem is None:
                    self._slept_at_level = self.sleep_level
                    self.last_park = time.monotonic() - parking
                    self.transition(S.SLEEPING, outcome.reason)
                    woke = await self._asleep()
                    if woke is None:
                        continue  # READY again: watch it
                    if self.state is S.STOPPED:
                        return None
                    return woke  # the wake failed: restart
                # An engine that refuses to sleep (no dev mode, flag ignored) is stopped from now on.
                log.warning("%s: cannot sleep, stopping instead: %s", self.id, problem)
                await self.log.note(f"cannot sleep ({problem}): stopping instead from now on")
                self.sleep_level = 0
            await self._terminate()
            self.last_park = time.monotonic() - parking
            self.transition(S.STOPPED, outcome.reason)
            return None

    async def _drain_requests(self, park: Park) -> None:
        """In-flight requests finish before the engine leaves its devices (bounded)."""
        deadline = time.monotonic() + park.drain_seconds
        # Pool.release has no per-backend event; a 20 ms poll is cheap and bounded.
        while self.backend.outstanding > 0 and time.monotonic() < deadline:  # noqa: ASYNC110
            await asyncio.sleep(0.02)
        if self.backend.outstanding:
            await self.log.note(f"{self.backend.outstanding} request(s) still running after the drain timeout")

    async def _sleep(self) -> str | None:
        root = f"http://127.0.0.1:{self.port}"
        headers = health.auth_headers(self.launch.api_key if self.launch else None)
        await self.log.note(f"sleep level {self.sleep_level}")
        return await sleepmode.sleep(self._session(), root, self.sleep_level, headers, self.spec.wake_timeout)

    async def _asleep(self) -> str | None:
        """Wait asleep for `activate` (or the process's exit). None: awake and READY again;
        else why the wake failed (state WAKING) or the process ended (state STOPPED)."""
        assert self.proc is not None
        exited = asyncio.ensure_future(exit_of(self.proc))
        wanted = asyncio.ensure_future(self._activated.wait())
        try:
            await asyncio.wait({exited, wanted}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            exited.cancel()
            wanted.cancel()
        if self.proc.returncode is not None:
            await self._drain_output()
            why = self._with_tail(describe_exit(self.proc.returncode) + " while asleep")
            self.backend.last_error = why
            if self.state is S.WAKING:
                return why
            self.transition(S.STOPPED, why)
            return why
        self._activated.clear()
        root = f"http://127.0.0.1:{self.port}"
        headers = health.auth_headers(self.launch.api_key if self.launch else None)
        level = self._slept_at_level
        await self.log.note("wake up" + (" and reload the weights (level 2)" if level >= 2 else ""))
        problem = await sleepmode.wake(self._session(), root, level, headers, self.spec.wake_timeout)
        if problem is not None:
            if problem.reload_unsupported:
                # Its weights can never come back without a restart: stop it instead from now on.
                await self.log.note("the engine cannot reload weights: stopping instead of sleeping from now on")
                self.sleep_level = 0
            self.backend.last_error = f"wake failed, restarting: {problem.message}"
            return self.backend.last_error
        self.transition(S.READY, "awake")
        return None

    # --- on demand (called by the residency coordinator) ---

    def activate(self, reason: str) -> bool:
        """Start or wake a parked engine; the loop does the work. False if not parked, or a
        failed start whose backoff has not passed."""
        if self.ended or not self.parked:
            return False
        if self.state is S.FAILED:
            if self.retry_at is None or time.monotonic() < self.retry_at:
                return False
            self.retry_at = None
            self.transition(S.STARTING, f"{reason}; retrying after a failed start")
        elif self.state is S.SLEEPING:
            self._wake_began = time.monotonic()
            self.transition(S.WAKING, reason)
        else:
            self.transition(S.STARTING, reason)
        self._activated.set()
        return True

    def park(self, reason: str, drain_seconds: float) -> bool:
        """Leave routing now; the loop drains, then sleeps or stops. False if not serving."""
        if self.state not in (S.READY, S.UNHEALTHY) or self._interrupt is None or self._interrupt.done():
            return False
        self.transition(S.DRAINING, reason)
        self._interrupt.set_result(Park(reason, drain_seconds))
        return True

    def _backoff(self, failures: int) -> float:
        e = self.engines
        return float(min(e.restart_backoff_initial * 2 ** max(0, failures - 1), e.restart_backoff_max))

    def _build_launch(self) -> Launch:
        spec = self.spec if self.spec.sleep == self.sleep_level else self.spec.model_copy(update={"sleep": self.sleep_level})
        req = launchers.request_for(self.backend.pool, self.pool_cfg, spec, self.engines, self.port, self.devices)
        return launchers.build(req)

    async def _start_once(self) -> str | None:
        """Spawn and wait for readiness. None when READY, else what went wrong (with output)."""
        try:
            if self.proc is not None:  # a fresh port: the old process may still hold its own
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
                self._session(), self._target(), launch.served_names[0], self.spec.startup_timeout,
                waited=self.demand_started,
            )
        )
        exited = asyncio.ensure_future(exit_of(self.proc))
        try:
            await asyncio.wait({ready, exited}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            ready.cancel()
            exited.cancel()
        if exited.done() and not exited.cancelled():
            await self._drain_output()
            return self._with_tail(f"{describe_exit(self.proc.returncode)} during start-up")
        exc = ready.exception()
        if isinstance(exc, health.KeyRejected):
            raise exc
        if exc is not None:
            return self._with_tail(str(exc))
        # The context length goes on the gateway's own /v1/models cards (bench tools read it);
        # from the list readiness fetched: a request may be waiting for this start.
        learn(self.backend, orjson.loads(ready.result()))
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

    async def _watch(self) -> str | Park:
        """Probe until the process exits, stays unhealthy too long, or is parked; returns why."""
        assert self.proc is not None
        loop = asyncio.get_running_loop()
        interrupt = self._interrupt = loop.create_future()
        exited = asyncio.ensure_future(exit_of(self.proc))
        probes = asyncio.ensure_future(
            health.monitor(self._session(), self._target(), self.backend, self.spec.health, self._on_verdict)
        )
        try:
            await asyncio.wait({exited, probes, interrupt}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for f in (exited, probes):
                f.cancel()
            self._cancel_unhealthy_timer()
        if interrupt.done() and not interrupt.cancelled():
            return interrupt.result()  # parked or restart asked: the exit (if any) is seen next
        interrupt.cancel()
        if exited.done() and not exited.cancelled():
            await self._drain_output()
            return self._with_tail(describe_exit(self.proc.returncode))
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
        if self._interrupt is not None and not self._interrupt.done() and self.state is S.UNHEALTHY:
            self._interrupt.set_result(reason)

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
        self.ended = True
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
            # The engine's own queue as last scraped and our speed estimates: what the
            # balancers compare.
            **self.backend.balancing_view(),
            "restarts": self.restarts,
            "last_error": self.backend.last_error,
            "uptime": round(now - self.ready_since, 1) if self.ready_since is not None else None,
            "starting_for": round(now - self.started_at, 1)
            if self.state is S.STARTING and self.started_at is not None
            else None,
            "start": self.spec.start,
            "sleep_level": self.sleep_level,
            "parked_for": round(now - self.parked_at, 1)
            if self.state in PARKED and self.parked_at is not None
            else None,
            # Rounded up: 0 only once a request would really start it (rounding to nearest
            # said 0 for the last 50 ms of a backoff that still refused requests).
            "retry_in": max(0.0, math.ceil((self.retry_at - now) * 10) / 10)
            if self.state is S.FAILED and self.retry_at is not None and math.isfinite(self.retry_at)
            else None,
            "last_load_seconds": None if self.last_load is None else round(self.last_load, 2),
            "last_wake_seconds": None if self.last_wake is None else round(self.last_wake, 2),
            "last_park_seconds": None if self.last_park is None else round(self.last_park, 3),
            "served_model": self.backend.served_model,
            "argv": self.launch.display_argv() if self.launch else None,
        }
