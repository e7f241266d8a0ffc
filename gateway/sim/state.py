"""The simulator's shared runtime state: config, batch scheduler, metrics, counters, crash."""

from __future__ import annotations

import asyncio
import logging
import os
import random
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from gateway.sim.config import SimConfig
from gateway.sim.devices import GIB, DeviceLedger, process_start, visible_devices
from gateway.sim.http import Connection
from gateway.sim.metrics import Metrics
from gateway.sim.prefix_cache import KvCache, PromptIds
from gateway.sim.scheduler import Scheduler
from gateway.sim.sleep import EngineState

log = logging.getLogger("gateway.sim")


@dataclass
class Counters:
    requests_total: int = 0  # inference requests received (chat, completions, embeddings)
    requests_finished: int = 0  # ... that ended, whatever the outcome (counts toward crash_after_requests)
    requests_succeeded: int = 0
    requests_aborted: int = 0  # client went away
    requests_failed: int = 0  # answered with an error status (validation or injected fault)


@dataclass
class SimState:
    cfg: SimConfig
    sched: Scheduler
    metrics: Metrics
    kv: KvCache
    engine: EngineState
    prompt_ids: PromptIds = field(default_factory=PromptIds)
    counters: Counters = field(default_factory=Counters)
    started_wall: float = field(default_factory=time.time)
    ready_at: float = 0.0  # loop time at which the "model" has loaded
    rng: random.Random = field(default_factory=random.Random)

    @classmethod
    def create(cls, cfg: SimConfig) -> SimState:
        sched = Scheduler(cfg.max_num_seqs, cfg.batch_slowdown, cfg.jitter, cfg.seed)
        kv = KvCache(cfg.kv.num_gpu_blocks, cfg.kv.block_size, cfg.kv.enable_prefix_caching)
        ledger = None
        if cfg.sleep.device_dir is not None:
            ledger = DeviceLedger(Path(cfg.sleep.device_dir), visible_devices(dict(os.environ)),
                                  int(cfg.sleep.device_memory_gb * GIB), cfg.model_name)
        engine = EngineState(cfg.sleep, kv, ledger)
        # Requests held while the engine sleeps wait in vLLM's scheduler queue too.
        metrics = Metrics(cfg.model_name, lambda: (sched.running, sched.waiting + engine.blocked,
                                                   sched.max_num_seqs),
                          kv_usage=kv.usage, extra=[kv.render_metrics, engine.render_metrics], dialect=cfg.dialect)
        return cls(cfg=cfg, sched=sched, metrics=metrics, kv=kv, engine=engine, rng=random.Random(cfg.seed))

    def is_ready(self) -> bool:
        return asyncio.get_running_loop().time() >= self.ready_at

    def ready_after_s(self) -> float | None:
        """Seconds from this process's start (the kernel's record, so the interpreter's own
        start-up counts) to ready: the engine's side of a cold load, which benchmarks subtract
        from what a client saw. 10 ms resolution (clock ticks)."""
        ticks = process_start(os.getpid())
        if ticks is None:
            return None
        started = ticks / os.sysconf("SC_CLK_TCK")  # seconds since boot
        ready = time.clock_gettime(time.CLOCK_BOOTTIME) - (asyncio.get_running_loop().time() - self.ready_at)
        return round(ready - started, 3)

    def crash(self, conn: Connection | None, why: str) -> None:
        """Die like a crashed engine: exit(1) with no cleanup and no graceful close.

        The exit happens from the event loop as soon as the bytes already handed to this
        connection's transport are on the wire (at most 0.5 s later), so a client sees
        exactly what was sent before the crash. Callers must not write anything after this.
        """
        print(f"gateway.sim: injected crash ({why}); exiting with status 1", file=sys.stderr, flush=True)
        transport = conn.transport if conn is not None else None
        loop = asyncio.get_running_loop()
        give_up = loop.time() + 0.5

        def exit_when_flushed() -> None:
            if (transport is None or transport.is_closing() or transport.get_write_buffer_size() == 0
                    or loop.time() >= give_up):
                os._exit(1)
            loop.call_later(0.002, exit_when_flushed)

        loop.call_soon(exit_when_flushed)

    def request_finished(self, conn: Connection | None) -> None:
        """Called once per inference request, after its response (or abort)."""
        c = self.counters
        c.requests_finished += 1
        limit = self.cfg.faults.crash_after_requests
        if limit is not None and c.requests_finished >= limit:
            self.crash(conn, f"crash_after_requests={limit}")
