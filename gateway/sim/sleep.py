"""Sleep mode (vLLM's `--enable-sleep-mode`) and the engine's claim on simulated device memory.

vLLM facts mirrored here (vllm/entrypoints/serve/sleep/api_router.py, v1/engine/core.py,
v1/executor/abstract.py, tests/entrypoints/openai/test_sleep.py):
- `/sleep`, `/wake_up`, `/is_sleeping` exist only with VLLM_SERVER_DEV_MODE=1 (else 404).
- `POST /sleep?level=1|2&mode=abort|wait` (defaults 1, abort) answers 200 with an empty body
  once asleep. It first pauses the scheduler: `abort` ends in-flight requests at once (finish
  reason `abort`), `wait` lets them finish first. The prefix cache is reset. Level 1 offloads
  the weights to CPU and drops the KV cache; level 2 drops both. Sleeping again is a no-op.
- `POST /wake_up[?tags=weights&tags=kv_cache]` restores the given parts (all when no tag) and
  answers 200; the engine is asleep until every part is back. Waking an awake engine or
  naming a part that is not asleep is a logged no-op (still 200).
- `GET /is_sleeping` -> `{"is_sleeping": bool}`; true from the moment sleep begins until the
  last part has woken. `/health` stays 200 throughout.
- Level 2 discards the weights: a wake reallocates their memory but not their content, and
  vLLM serves from whatever the memory holds (garbage) until the weights are reloaded:
  `wake_up?tags=weights`, then `POST /collective_rpc {"method": "reload_weights"}` (dev mode,
  v1/worker/gpu_worker.py reload_weights), then `wake_up?tags=kv_cache` (vLLM's documented
  level-2 sequence). Here the reload costs most of the level-2 wake time, and requests
  admitted with unreloaded weights are counted (`served_without_weights` in /sim/state)
  instead of producing garbage.
- Requests that arrive while asleep are accepted and wait (counted in num_requests_waiting)
  until the engine wakes, as vLLM's paused scheduler queues them.
- Gauge `vllm:engine_sleep_state{sleep_state="awake"|"weights_offloaded"|"discard_all"}`.
Not simulated: `mode=keep`, level 0 (pause only) and the `scheduling` tag (400 here).
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass, field
from typing import Any, Protocol

from gateway.sim.devices import GIB, DeviceLedger, DeviceOutOfMemory
from gateway.sim.prefix_cache import KvCache

log = logging.getLogger("gateway.sim")
TAGS = ("weights", "kv_cache")
MODES = ("abort", "wait")


@dataclass
class SleepConfig:
    enabled: bool = False  # --enable-sleep-mode
    dev_mode: bool = False  # VLLM_SERVER_DEV_MODE=1: the dev endpoints exist
    startup_seconds: float = 0.0
    sleep_seconds: float | None = None  # None: as long as a level-1 wake (same bytes, other direction)
    wake_seconds: float | None = None  # level 1; None: 10% of startup_seconds (weights from CPU RAM)
    wake_seconds_level2: float | None = None  # None: 50% of startup (weights reloaded; process stays up)
    device_dir: str | None = None  # None: no device accounting
    device_memory_gb: float = 80.0
    model_memory_gb: float = 16.0  # weights, split evenly over the visible devices (tensor parallel)
    gpu_memory_utilization: float = 0.9  # the share of each device the engine claims (vLLM's meaning)

    def wake_time(self, level: int) -> float:
        if level >= 2:
            return self.wake_seconds_level2 if self.wake_seconds_level2 is not None else 0.5 * self.startup_seconds
        return self.wake_seconds if self.wake_seconds is not None else 0.1 * self.startup_seconds

    def sleep_time(self) -> float:
        return self.sleep_seconds if self.sleep_seconds is not None else self.wake_time(1)


class Abortable(Protocol):
    def engine_abort(self) -> None: ...


class SleepError(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


@dataclass
class EngineState:
    """Awake/asleep, the in-flight requests, and this engine's share of its devices."""

    cfg: SleepConfig
    kv: KvCache
    ledger: DeviceLedger | None = None
    level: int = 0  # 0 awake, else the level it sleeps at
    sleeping_tags: set[str] = field(default_factory=set)
    blocked: int = 0  # requests waiting for the engine to wake
    weights_valid: bool = True  # False from a level-2 sleep until reload_weights
    served_without_weights: int = 0  # requests admitted while weights_valid was False
    inflight: set[Abortable] = field(default_factory=set)
    transitions: list[dict[str, Any]] = field(default_factory=list)  # last few, for /sim/state
    _awake: asyncio.Event = field(default_factory=asyncio.Event)
    _idle: asyncio.Event = field(default_factory=asyncio.Event)
    _lock: asyncio.Lock = field(default_factory=asyncio.Lock)

    def __post_init__(self) -> None:
        self._awake.set()
        self._idle.set()

    # ---- memory ----------------------------------------------------------------------
    def weights_bytes(self) -> int:
        n = len(self.ledger.devices) if self.ledger is not None else 1
        return int(self.cfg.model_memory_gb * GIB / n)

    def total_bytes(self) -> int:
        return int(self.cfg.gpu_memory_utilization * self.cfg.device_memory_gb * GIB)

    def claim_for(self, asleep: set[str]) -> int:
        weights = self.weights_bytes()
        return ((0 if "weights" in asleep else weights)
                + (0 if "kv_cache" in asleep else self.total_bytes() - weights))

    def claim_at_start(self) -> None:
        """vLLM's start-up check: the engine takes gpu_memory_utilization of each device. Blocking."""
        if self.ledger is None:
            return
        if self.weights_bytes() >= self.total_bytes():
            raise DeviceOutOfMemory("No available memory for the cache blocks. Try increasing "
                                    "`gpu_memory_utilization` when initializing the engine.")
        try:
            self.ledger.set_claim(self.total_bytes())
        except DeviceOutOfMemory as exc:
            raise DeviceOutOfMemory(
                f"Free memory on device on startup is less than desired GPU memory utilization "
                f"({self.cfg.gpu_memory_utilization}, {self.total_bytes() / GIB:.2f} GiB). Decrease GPU memory "
                f"utilization or reduce GPU memory used by other processes. ({exc})") from None

    # ---- request gate -------------------------------------------------------------------
    async def wait_awake(self) -> None:
        if self._awake.is_set():
            return
        self.blocked += 1
        try:
            await self._awake.wait()
        finally:
            self.blocked -= 1

    def enter(self, req: Abortable) -> None:
        if not self.weights_valid:
            self.served_without_weights += 1
            log.warning("serving a request with weights discarded by a level-2 sleep and never reloaded")
        self.inflight.add(req)
        self._idle.clear()

    def leave(self, req: Abortable) -> None:
        self.inflight.discard(req)
        if not self.inflight:
            self._idle.set()

    @property
    def is_sleeping(self) -> bool:
        return self.level > 0

    # ---- transitions ----------------------------------------------------------------------
    async def sleep(self, level: int, mode: str) -> None:
        if not self.cfg.enabled:
            raise SleepError(500, "Sleep mode is not enabled: start the engine with --enable-sleep-mode")
        if level not in (1, 2):
            raise SleepError(400, f"level must be 1 or 2 (level 0 is not simulated), got {level}")
        if mode not in MODES:
            raise SleepError(400, f"mode must be one of {MODES} ('keep' is not simulated), got {mode!r}")
        async with self._lock:
            if self.is_sleeping:
                log.warning("Executor is already sleeping.")
                return
            t0 = time.monotonic()
            self.level = level
            self.sleeping_tags = set(TAGS)
            self._awake.clear()  # new requests queue from now on
            if mode == "abort":
                for req in list(self.inflight):
                    req.engine_abort()
            await self._idle.wait()
            self.kv.reset()  # the KV cache is discarded: nothing stays cached
            if level >= 2:
                self.weights_valid = False  # discarded, not offloaded
            await asyncio.sleep(self.cfg.sleep_time())
            if self.ledger is not None:
                await asyncio.to_thread(self.ledger.set_claim, 0)  # small file I/O under flock
            self._record("sleep", level, t0)

    async def wake_up(self, tags: list[str] | None) -> None:
        if tags:
            unknown = [t for t in tags if t not in TAGS]
            if unknown:
                raise SleepError(400, f"unknown tags {unknown}; known: {list(TAGS)}")
        async with self._lock:
            if not self.is_sleeping:
                log.warning("Executor is not sleeping.")
                return
            wanted = set(tags) if tags else set(self.sleeping_tags)
            if not wanted <= self.sleeping_tags:
                log.warning("Tag %s is not in sleeping tags %s", sorted(wanted - self.sleeping_tags),
                            sorted(self.sleeping_tags))
                return
            t0 = time.monotonic()
            remaining = self.sleeping_tags - wanted
            if self.ledger is not None:
                try:
                    await asyncio.to_thread(self.ledger.set_claim, self.claim_for(remaining))
                except DeviceOutOfMemory as exc:
                    log.error("wake_up failed: %s", exc)
                    raise SleepError(500, str(exc)) from None
            if self.level >= 2:
                # Level 2 only reallocates here (a tenth of its wake time per part); the
                # reload from disk (reload_weights) is the rest.
                share = 0.1 * len(wanted)
            else:  # level 1 copies the weights back from CPU RAM: that is the wake time
                share = 1.0 if "weights" in wanted else 0.1
            await asyncio.sleep(share * self.cfg.wake_time(self.level))
            self.sleeping_tags = remaining
            self._record("wake_up", self.level, t0, sorted(wanted))
            if not remaining:
                self.level = 0
                self._awake.set()

    async def reload_weights(self) -> None:
        """`collective_rpc("reload_weights")`: the weights are read from disk again into their
        (awake) memory. Without that memory there is nothing to load into: 500."""
        async with self._lock:
            if "weights" in self.sleeping_tags:
                raise SleepError(500, "reload_weights: the weights' memory is asleep; "
                                      "POST /wake_up?tags=weights first")
            t0 = time.monotonic()
            await asyncio.sleep(0.8 * self.cfg.wake_time(2))  # the checkpoint is read again, valid or not
            self.weights_valid = True
            self._record("reload_weights", self.level, t0)

    def _record(self, what: str, level: int, t0: float, tags: list[str] | None = None) -> None:
        took = time.monotonic() - t0
        log.warning("gateway.sim: %s level=%d tags=%s took %.3f s", what, level, tags, took)
        self.transitions = (self.transitions + [{"op": what, "level": level, "tags": tags,
                                                 "seconds": round(took, 4)}])[-8:]

    # ---- reporting -------------------------------------------------------------------------
    def state_label(self) -> str:
        return "awake" if self.level == 0 else "weights_offloaded" if self.level == 1 else "discard_all"

    def render_metrics(self, labels: str, out: list[str]) -> None:
        current = self.state_label()
        out += ["# HELP vllm:engine_sleep_state Engine sleep state; awake = 0 means engine is sleeping; "
                "awake = 1 means engine is awake; weights_offloaded = 1 means sleep level 1; "
                "discard_all = 1 means sleep level 2.",
                "# TYPE vllm:engine_sleep_state gauge"]
        for name in ("awake", "weights_offloaded", "discard_all"):
            out.append(f'vllm:engine_sleep_state{{{labels},sleep_state="{name}"}} {1.0 if name == current else 0.0}')

    def snapshot(self) -> dict[str, Any]:
        cfg = self.cfg
        return {"enabled": cfg.enabled, "dev_mode": cfg.dev_mode, "is_sleeping": self.is_sleeping,
                "level": self.level, "sleeping_tags": sorted(self.sleeping_tags), "blocked": self.blocked,
                "sleep_seconds": cfg.sleep_time(), "wake_seconds": cfg.wake_time(1),
                "wake_seconds_level2": cfg.wake_time(2), "startup_seconds": cfg.startup_seconds,
                "claim_bytes": self.claim_for(self.sleeping_tags) if self.ledger is not None else None,
                "weights_valid": self.weights_valid, "served_without_weights": self.served_without_weights,
                "transitions": self.transitions}
