"""Event-loop stall watchdog: says where the loop was stuck when it stops running.

Everything the gateway does runs on one event loop. A call that blocks it (a synchronous
read, a long parse, a lock) stalls every request, probe and timer at once; timers then
fire late and judge clients and engines on stale state (a client that read all along
looks as if it read nothing). Such stalls are invisible from inside the loop, so a daemon
thread watches a heartbeat the loop refreshes, and when the heartbeat is older than
`threshold` it logs the loop thread's stack once per stall (and the stall's length when
the loop runs again). Costs four wake-ups a second.
"""

from __future__ import annotations

import asyncio
import logging
import sys
import threading
import time
import traceback

log = logging.getLogger("gateway.watchdog")


class LoopWatchdog:
    def __init__(self, loop: asyncio.AbstractEventLoop, threshold: float = 2.0, tick: float = 0.25) -> None:
        self.loop = loop
        self.threshold = threshold
        self.tick = tick
        self.beat = time.monotonic()
        self.stalls = 0  # stalls seen (for tests and metrics)
        self._loop_thread = threading.get_ident()
        self._stop = threading.Event()
        self._timer: asyncio.TimerHandle | None = None
        self._thread = threading.Thread(target=self._watch, name="loop-watchdog", daemon=True)

    def start(self) -> LoopWatchdog:
        """Call from the loop's own thread."""
        self._loop_thread = threading.get_ident()
        self._heartbeat()
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        if self._timer is not None:
            self._timer.cancel()

    def _heartbeat(self) -> None:
        self.beat = time.monotonic()
        self._timer = self.loop.call_later(self.tick, self._heartbeat)

    def _watch(self) -> None:
        stalled_since: float | None = None
        while not self._stop.wait(self.tick):
            beat = self.beat
            lag = time.monotonic() - beat
            if lag > self.threshold and stalled_since != beat:
                stalled_since = beat
                self.stalls += 1
                frame = sys._current_frames().get(self._loop_thread)
                where = "".join(traceback.format_stack(frame)) if frame is not None else "(no frame)"
                log.warning("event loop stalled for %.1f s so far; it is running:\n%s", lag, where)
            elif stalled_since is not None and beat != stalled_since:
                log.warning("event loop ran again after a %.1f s stall", beat - stalled_since)
                stalled_since = None
