"""The swap policy's decisions, step by step at chosen instants (no processes, no clock).

Engines and pools are small stand-ins with the fields the coordinator reads; `step(now)`
is called at explicit times, so every rule is checked exactly: min_residency, idle_grace,
max_defer, queued-first, fcfs, and oldest-wanted-first.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from types import SimpleNamespace
from typing import Any

from gateway.config import ServerConfig, SpawnConfig, SwapConfig
from gateway.engines.residency import Residency
from gateway.errors import GatewayError
from gateway.routing.backend import BackendState

S = BackendState


@dataclass(eq=False)
class Engine:
    pool_name: str
    devices: tuple[str, ...] = ("0",)
    state: BackendState = S.STOPPED
    ready_since: float | None = None
    spec: SpawnConfig = field(default_factory=lambda: SpawnConfig(engine="sim", model="m", start="on_demand"))
    log: list[str] = field(default_factory=list)
    last_load: float | None = None  # seconds its last cold load took
    last_wake: float | None = None
    last_park: float | None = None  # its last sleep or stop
    retry_at: float | None = None
    backend: Any = field(default_factory=lambda: SimpleNamespace(last_error=None))
    now: float = 0.0  # the test's clock, for activate's backoff check
    @property
    def id(self) -> str:
        return f"{self.pool_name}/sim-0"

    @property
    def demand_started(self) -> bool:
        return True

    @property
    def parked(self) -> bool:
        return self.state in (S.STOPPED, S.SLEEPING) or (self.state is S.FAILED and self.retry_at is not None)

    def activate(self, reason: str) -> bool:
        if self.state is S.FAILED and (self.retry_at is None or self.now < self.retry_at):
            return False
        self.log.append("activate")
        self.state = S.STARTING
        return True

    def park(self, reason: str, drain_seconds: float) -> bool:
        self.log.append(f"park: {reason}")
        self.state = S.DRAINING
        return True


@dataclass
class Pool:
    name: str
    queued: int = 0
    outstanding: int = 0
    last_release: float = 0.0
    cfg: Any = field(default_factory=lambda: SimpleNamespace(queue=SimpleNamespace(timeout=30.0)))
    failed: list[GatewayError] = field(default_factory=list)

    def fail_waiters(self, error: Callable[[], GatewayError]) -> int:
        n, self.queued = self.queued, 0
        self.failed += [error() for _ in range(n)]
        return n


class Sup:
    def __init__(self, engines: list[Engine], swap: SwapConfig) -> None:
        self.engines = engines
        self.settings = SimpleNamespace(swap=swap)
        self.state = SimpleNamespace(pools={e.pool_name: Pool(e.pool_name) for e in engines},
                                     config=SimpleNamespace(server=ServerConfig(drain_seconds=5)), metrics=None)

    def live(self) -> list[Engine]:
        return self.engines

    def pulse(self) -> None:
        pass


def setup(policy: str = "residency") -> tuple[Residency, Engine, Engine, Sup]:
    a, b = Engine("a", state=S.READY, ready_since=100.0), Engine("b")
    sup = Sup([a, b], SwapConfig(policy=policy, min_residency=30, idle_grace=2, max_defer=60))  # type: ignore[arg-type]
    return Residency(sup), a, b, sup  # type: ignore[arg-type]


def want(res: Residency, sup: Sup, pool: str, now: float) -> None:
    sup.state.pools[pool].queued += 1
    res._wanted_since.setdefault(pool, now)


def test_resident_keeps_its_turn_for_min_residency_then_leaves_at_a_pause() -> None:
    res, a, b, sup = setup()
    want(res, sup, "b", 110.0)
    assert res.step(110.0) == 20.0  # next look: when a's 30 s of residency are up
    assert a.log == [] and b.log == []
    sup.state.pools["a"].outstanding = 1  # a still serving at 130: its requests first
    assert res.step(130.0) is not None and a.log == []
    sup.state.pools["a"].outstanding, sup.state.pools["a"].last_release = 0, 131.0
    assert res.step(132.0) == 1.0  # a pause, but not idle_grace (2 s) long yet
    res.step(133.0)
    assert a.log == ["park: swapped out for b"] and res.swaps == {"b": 1}
    a.state = S.SLEEPING  # the engine's loop drained it and put it to sleep
    res.step(133.5)
    assert b.log == ["activate"] and "b" not in res._wanted_since


def test_max_defer_wins_over_a_resident_that_never_pauses() -> None:
    res, a, _, sup = setup()
    sup.state.pools["a"].queued = 3  # always busy
    want(res, sup, "b", 110.0)
    res.step(169.0)
    assert a.log == []
    res.step(170.0)  # 60 s after b first asked
    assert a.log == ["park: swapped out for b"]


def test_fcfs_swaps_as_soon_as_the_resident_is_ready() -> None:
    res, a, _, sup = setup("fcfs")
    sup.state.pools["a"].outstanding = 2
    want(res, sup, "b", 100.5)
    res.step(100.5)
    assert a.log == ["park: swapped out for b"]  # in-flight requests are drained by the engine loop


def test_no_eviction_while_the_holder_is_still_starting_or_waking() -> None:
    res, a, _, sup = setup("fcfs")
    a.state, a.ready_since = S.WAKING, None
    want(res, sup, "b", 100.0)
    assert res.step(100.0) is not None and a.log == []


def test_oldest_wanted_pool_goes_first_and_the_younger_waits_for_its_turn() -> None:
    a = Engine("a", state=S.READY, ready_since=0.0)
    b, c = Engine("b"), Engine("c")
    sup = Sup([a, b, c], SwapConfig(policy="residency", min_residency=30, idle_grace=2, max_defer=60))  # type: ignore[arg-type]
    res = Residency(sup)  # type: ignore[arg-type]
    want(res, sup, "c", 50.0)
    want(res, sup, "b", 51.0)
    res.step(60.0)
    assert a.log == ["park: swapped out for c"]
    a.state = S.SLEEPING
    res.step(61.0)
    assert c.log == ["activate"] and b.log == []  # b needs the same device: it waits for c's turn
    c.state, c.ready_since = S.READY, 62.0
    sup.state.pools["c"].queued = 0  # its waiters got their backend
    res.step(70.0)
    assert c.log == ["activate"]  # c keeps it for min_residency
    res.step(92.5)
    assert c.log == ["activate", "park: swapped out for b"]


def test_idle_engine_is_parked_after_its_idle_timeout() -> None:
    spec = SpawnConfig(engine="sim", model="m", start="on_demand", idle_timeout=10, sleep=1)
    a = Engine("a", state=S.READY, ready_since=0.0, spec=spec)
    sup = Sup([a], SwapConfig())
    res = Residency(sup)  # type: ignore[arg-type]
    sup.state.pools["a"].last_release = 5.0
    assert res.step(14.0) == 1.0 and a.log == []
    res.step(15.0)
    assert a.log == ["park: idle for 10s"]


def test_turn_scales_with_what_the_swap_would_cost() -> None:
    # The resident a stops in 0.5 s. Making way for b's 5 s cold load costs 5.5 s of dead
    # device: a keeps it 2 x 5.5 = 11 s. Making way for b's 0.3 s wake costs 0.8 s: the
    # turn is min_residency (2 s).
    for b_state, b_times, turn in ((S.STOPPED, {"last_load": 5.0}, 11.0), (S.SLEEPING, {"last_wake": 0.3}, 2.0)):
        a = Engine("a", state=S.READY, ready_since=10.0, last_park=0.5)
        b = Engine("b", state=b_state, **b_times)  # type: ignore[arg-type]
        sup = Sup([a, b], SwapConfig(policy="residency", min_residency=2, idle_grace=0, max_defer=60, cost_factor=2))  # type: ignore[arg-type]
        res = Residency(sup)  # type: ignore[arg-type]
        want(res, sup, "b", 10.5)
        assert res.step(10.5) == turn - 0.5
        res.step(10.0 + turn - 0.01)
        assert a.log == []
        res.step(10.0 + turn)
        assert a.log == ["park: swapped out for b"]
        assert res.shown_turn(a) == turn  # what /admin/backends shows


def test_unmeasured_costs_count_zero_and_cost_factor_0_turns_it_off() -> None:
    a = Engine("a", state=S.READY, ready_since=0.0)  # never parked, b never loaded: min_residency
    b = Engine("b")
    sup = Sup([a, b], SwapConfig(policy="residency", min_residency=3, idle_grace=0, max_defer=60))  # type: ignore[arg-type]
    res = Residency(sup)  # type: ignore[arg-type]
    assert res.turn(a, [b]) == 3
    a.last_park, b.last_load = 1.0, 9.0
    assert res.turn(a, [b]) == 20
    sup.settings.swap = SwapConfig(policy="residency", min_residency=3, cost_factor=0)
    assert res.turn(a, [b]) == 3


def test_cost_scaled_turn_never_outlasts_max_defer() -> None:
    a = Engine("a", state=S.READY, ready_since=0.0, last_park=1.0)
    b = Engine("b", last_load=60.0)  # a 60 s cold load: a 122 s turn
    sup = Sup([a, b], SwapConfig(policy="residency", min_residency=2, idle_grace=0, max_defer=30))  # type: ignore[arg-type]
    res = Residency(sup)  # type: ignore[arg-type]
    want(res, sup, "b", 5.0)
    res.step(34.9)
    assert a.log == []
    res.step(35.0)
    assert a.log == ["park: swapped out for b"]


def test_a_failed_engine_on_the_shared_device_blocks_no_swap() -> None:
    # a's on-demand start failed: its process is gone, so b takes the device at once.
    a = Engine("a", state=S.FAILED, retry_at=1e9)
    b = Engine("b")
    sup = Sup([a, b], SwapConfig(policy="residency", min_residency=30, idle_grace=2, max_defer=60))  # type: ignore[arg-type]
    res = Residency(sup)  # type: ignore[arg-type]
    want(res, sup, "b", 10.0)
    res.step(10.0)
    assert b.log == ["activate"] and a.log == [] and res.swaps == {}


def test_requests_for_a_failed_start_in_its_backoff_are_answered_at_once_then_retried() -> None:
    a = Engine("a", state=S.FAILED, retry_at=20.0)
    a.backend.last_error = "cannot start '/no/such/engine': No such file or directory"
    sup = Sup([a], SwapConfig())
    res = Residency(sup)  # type: ignore[arg-type]
    want(res, sup, "a", 10.0)
    a.now = 10.0
    res.step(10.0)
    [err] = sup.state.pools["a"].failed
    assert err.status == 503 and err.code == "engine_start_failed" and err.headers["retry-after"] == "10"
    assert "Pool `a`" in err.message and "No such file" in err.message and a.log == []
    want(res, sup, "a", 20.0)  # after the backoff: this request starts it again
    a.now = 20.0
    res.step(20.0)
    assert a.log == ["activate"] and len(sup.state.pools["a"].failed) == 1
