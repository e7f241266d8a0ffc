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
import os
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
        self._loop_thread = 0  # the loop thread's ids, taken in `start`
        self._loop_tid = 0
        self._stop = threading.Event()
        self._timer: asyncio.TimerHandle | None = None
        self._thread = threading.Thread(target=self._watch, name="loop-watchdog", daemon=True)

    def start(self) -> LoopWatchdog:
        """Call from the loop's own thread."""
        self._loop_thread = threading.get_ident()
        self._loop_tid = threading.get_native_id()
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

    def _cpu(self) -> tuple[str, float] | None:
        """The loop thread's scheduler state and CPU seconds (Linux /proc), to tell a loop
        busy in C code (CPU grows) from one blocked or starved of CPU (it does not)."""
        try:
            with open(f"/proc/self/task/{self._loop_tid}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
        except OSError:
            return None
        return fields[0], (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    def _watch(self) -> None:
        stalled_since: float | None = None
        cpu_then: tuple[str, float] | None = None
        while not self._stop.wait(self.tick):
            beat = self.beat
            lag = time.monotonic() - beat
            if lag > self.threshold and stalled_since != beat:
                stalled_since = beat
                self.stalls += 1
                cpu_then = self._cpu()
                frame = sys._current_frames().get(self._loop_thread)
                where = "".join(traceback.format_stack(frame)) if frame is not None else "(no frame)"
                state = f"thread state {cpu_then[0]}, " if cpu_then is not None else ""
                log.warning("event loop stalled for %.1f s so far (%sload average %s); it is running:\n%s",
                            lag, state, " ".join(f"{x:.1f}" for x in os.getloadavg()), where)
            elif stalled_since is not None and beat != stalled_since:
                cpu_now = self._cpu()
                used = f"; the loop thread used {cpu_now[1] - cpu_then[1]:.1f} s of CPU after the report" if (
                    cpu_now is not None and cpu_then is not None) else ""
                log.warning("event loop ran again after a %.1f s stall%s", beat - stalled_since, used)
                stalled_since = None
