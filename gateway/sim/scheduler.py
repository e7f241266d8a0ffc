"""Continuous-batching admission: at most max_num_seqs requests generate, the rest wait FIFO.

A slot is handed directly from a finishing request to the oldest waiter, so the
running count never dips in between and FIFO order holds. A waiter that is
cancelled (client disconnect) leaves the queue at once, so `num_requests_waiting`
is exact at every instant.

Prefill is compute-bound: an engine spends its step budget on one prompt's uncached
tokens before the next one's (vLLM's chunked prefill shares each step's token budget
among them, which ends at the same total), so prefills queue behind each other
(`book_prefill`). Without that, two 10k-token misses would each start their first token
as if alone, and a router's prefill-backlog estimate would have nothing to predict.
"""

from __future__ import annotations

import asyncio
import itertools
import random
from collections import OrderedDict


class Scheduler:
    def __init__(self, max_num_seqs: int, batch_slowdown: float = 1.0, jitter: float = 0.0,
                 seed: int = 0) -> None:
        self.max_num_seqs = max_num_seqs
        self.batch_slowdown = batch_slowdown
        self.jitter = jitter
        self.running = 0
        self.prefill_free_at = 0.0  # loop time at which the prefills booked so far are done
        self._waiting: OrderedDict[int, asyncio.Future[None]] = OrderedDict()
        self._ids = itertools.count()
        # Jitter needs no reproducibility across runs, but a seeded RNG keeps runs comparable.
        self._rng = random.Random(seed)

    @property
    def waiting(self) -> int:
        return len(self._waiting)

    def try_acquire(self) -> bool:
        """Take a slot without waiting; False if the batch is full or others queue first."""
        if self.running < self.max_num_seqs and not self._waiting:
            self.running += 1
            return True
        return False

    async def acquire(self) -> None:
        """Wait FIFO for a slot. On cancellation the request leaves the queue (or returns a
        slot it was handed in the same instant), so nothing leaks."""
        if self.try_acquire():
            return
        key = next(self._ids)
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiting[key] = fut
        try:
            await fut
        except asyncio.CancelledError:
            if self._waiting.pop(key, None) is None and fut.done() and not fut.cancelled():
                self.release()  # the slot was handed over just before the cancel landed
            raise

    def release(self) -> None:
        """Free a slot: give it straight to the oldest waiter, or shrink the batch."""
        while self._waiting:
            _, fut = self._waiting.popitem(last=False)
            if not fut.done():
                fut.set_result(None)  # the slot passes on: running stays the same
                return
        self.running -= 1

    # ---- timing --------------------------------------------------------------
    def book_prefill(self, now: float, seconds: float) -> float:
        """Queue `seconds` of prefill compute behind the prefills already booked; returns the
        wait before it starts. A request that leaves before its prefill ran keeps its booking
        (vLLM would free it at the next step): pessimistic only under cancellations."""
        if seconds <= 0.0:
            return 0.0
        start = max(now, self.prefill_free_at)
        self.prefill_free_at = start + seconds
        return start - now

    def slowdown(self) -> float:
        """ITL factor from batch occupancy: 1 when (nearly) empty, batch_slowdown when full."""
        if self.batch_slowdown == 1.0:
            return 1.0
        occupancy = min(1.0, self.running / self.max_num_seqs)
        return 1.0 + (self.batch_slowdown - 1.0) * occupancy

    def jittered(self, seconds: float) -> float:
        if self.jitter <= 0.0 or seconds <= 0.0:
            return seconds
        return max(0.0, seconds * (1.0 + self.jitter * (2.0 * self._rng.random() - 1.0)))
