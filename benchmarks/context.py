"""What every scenario gets: the run's mode (quick/full), placement, the gateway's subsystems,
logging, an event loop."""

from __future__ import annotations

import asyncio
import sys
import time
from collections.abc import Coroutine
from dataclasses import dataclass, field
from typing import Any, TypeVar

from .procs import PRODUCTION, Placement, Subsystems

T = TypeVar("T")


@dataclass
class Bench:
    quick: bool
    placement: Placement
    # The gateway's hot-path subsystems in overhead/streams/metering/peers/profile.
    subsystems: Subsystems = PRODUCTION
    started: float = field(default_factory=time.monotonic)
    notes: list[str] = field(default_factory=list)

    def log(self, msg: str) -> None:
        print(f"[{time.monotonic() - self.started:6.1f}s] {msg}", file=sys.stderr, flush=True)

    def run(self, coro: Coroutine[Any, Any, T]) -> T:
        try:
            import uvloop

            factory: Any = uvloop.new_event_loop
        except ImportError:  # pragma: no cover
            factory = None
        with asyncio.Runner(loop_factory=factory) as runner:
            return runner.run(coro)

    def pick(self, quick: T, full: T) -> T:
        return quick if self.quick else full
