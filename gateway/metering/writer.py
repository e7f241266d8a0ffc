"""The batching writer between the request path and the store.

`add` appends to an in-memory buffer and returns: it never waits on the store. Writes
are group commits: the first record into an empty buffer opens a window of
`flush_interval` seconds (default 0.1); when it closes, every record buffered by then is
written in one transaction (sooner when a full batch is waiting), and on `close`. So a
record is handed to the store at most `flush_interval` after it was added (plus the
write in progress, if any), which bounds what a SIGKILL of the gateway can lose (issue
#14: at most 200 ms of records); an idle gateway does no work at all.

A store that is down or slow never fails or slows a request: the batch that failed stays
at the head of the buffer and is retried (same batch id, so a write that did land is not
counted twice) until the store answers, backing off up to RETRY_MAX_S.

The buffer is bounded (`buffer_max` records, counting the batch in flight). When full,
the oldest record is dropped, counted in `dropped` (exported as
`gateway_usage_records_dropped_total`) and logged (at most every 10 s).

Records whose tokens must be estimated are estimated here, in a worker thread, right
before they are written.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import uuid
from collections import deque
from collections.abc import Callable

from .record import UsageRecord
from .store import Store

log = logging.getLogger("gateway.metering")

RETRY_MAX_S = 5.0  # longest pause between attempts while the store is down
LOG_EVERY_S = 10.0


class Writer:
    def __init__(
        self,
        store: Store,
        buffer_max: int,
        flush_interval: float,
        batch_max: int = 5000,
        on_estimated: Callable[[list[UsageRecord]], None] | None = None,
    ) -> None:
        self.store = store
        self.buffer_max = buffer_max
        self.flush_interval = flush_interval
        # A batch is at most a quarter of the buffer, so a full buffer always has
        # records outside the batch in flight to drop.
        self.batch_max = max(1, min(batch_max, buffer_max // 4))
        self.on_estimated = on_estimated
        self.dropped = 0
        self.written = 0
        self.failures = 0  # failed write attempts
        self._buf: deque[UsageRecord] = deque()
        self._batch: deque[UsageRecord] = deque()  # the batch being written or awaiting retry
        self._batch_id = ""
        self._inflight = False
        self._lock = asyncio.Lock()
        self._wake = asyncio.Event()  # set when records wait and no window is open
        self._full = asyncio.Event()  # set when a full batch waits: end the window early
        self._stop = asyncio.Event()  # set by close: ends a window or a retry pause
        self._task: asyncio.Task[None] | None = None
        self._closing = False
        self._last_drop_log = 0.0
        self._dropped_logged = 0
        self._down_since: float | None = None
        self._last_fail_log = 0.0

    @property
    def buffered(self) -> int:
        return len(self._buf) + len(self._batch)

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="usage-writer")

    # --- request path -----------------------------------------------------------------

    def add(self, rec: UsageRecord) -> None:
        """Buffer one record. O(1), never blocks, never raises."""
        if self.buffered >= self.buffer_max:
            self._drop_oldest()
        self._buf.append(rec)
        if len(self._buf) == 1:
            self._wake.set()  # the first record of a group opens its commit window
        if len(self._buf) >= self.batch_max:
            self._full.set()

    def _drop_oldest(self) -> None:
        # The waiting batch holds the oldest records, unless it is being written right now.
        if self._batch and not self._inflight:
            self._batch.popleft()
        elif self._buf:
            self._buf.popleft()
        else:
            return
        self.dropped += 1
        now = time.monotonic()
        if now - self._last_drop_log >= LOG_EVERY_S:
            log.warning(
                "usage buffer full (%d records): dropped %d oldest record(s) so far; the store is not keeping up",
                self.buffer_max,
                self.dropped - self._dropped_logged,
            )
            self._last_drop_log = now
            self._dropped_logged = self.dropped

    # --- flushing -----------------------------------------------------------------------

    async def _run(self) -> None:
        ok, delay = True, self.flush_interval
        while not self._closing:
            await self._wake.wait()  # idle until a record arrives (or close)
            self._wake.clear()
            # The commit window gathers the group; a full batch ends it early, except while
            # the store is failing: then the pause is a backoff that only close cuts short.
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for((self._full if ok else self._stop).wait(), timeout=delay)
            self._full.clear()
            if self._closing:
                break
            ok = await self.flush()
            # While the store is down, back off (but never past RETRY_MAX_S), then retry.
            delay = self.flush_interval if ok else min(max(delay * 2, self.flush_interval), RETRY_MAX_S)
            if self._buf or self._batch:
                self._wake.set()  # records came in during the write (or it failed): next group

    async def flush(self) -> bool:
        """Write everything buffered so far. False if the store failed (records kept for retry)."""
        async with self._lock:
            while self._batch or self._buf:
                if not self._batch:
                    n = min(self.batch_max, len(self._buf))
                    self._batch.extend(self._buf.popleft() for _ in range(n))
                    self._batch_id = uuid.uuid4().hex
                if not await self._write_batch():
                    return False
            return True

    async def _write_batch(self) -> bool:
        batch = list(self._batch)
        self._inflight = True
        try:
            fresh = [r for r in batch if not r.estimate_done]
            if fresh:
                # Tokenizing a long stream is CPU work: keep it off the event loop.
                await asyncio.to_thread(_estimate_all, fresh)
                if self.on_estimated is not None:
                    try:
                        self.on_estimated(fresh)
                    except Exception:
                        log.exception("usage on_estimated hook failed")
            await self.store.write(batch, self._batch_id)
        except Exception as e:
            self._store_failed(e)
            return False
        finally:
            self._inflight = False
        self._batch.clear()
        self.written += len(batch)
        if self._down_since is not None:
            log.warning(
                "usage store is back after %.1fs; writing %d buffered record(s)",
                time.monotonic() - self._down_since,
                self.buffered + len(batch),
            )
            self._down_since = None
        return True

    def _store_failed(self, e: Exception) -> None:
        self.failures += 1
        now = time.monotonic()
        if self._down_since is None:
            self._down_since = now
            self._last_fail_log = now
            log.warning(
                "usage store write failed (%s: %s); buffering %d record(s)",
                type(e).__name__,
                e,
                self.buffered,
            )
        elif now - self._last_fail_log >= LOG_EVERY_S:
            self._last_fail_log = now
            log.warning(
                "usage store still failing after %.0fs (%s); %d record(s) buffered, %d dropped",
                now - self._down_since,
                e,
                self.buffered,
                self.dropped,
            )

    async def close(self, grace_s: float = 10.0) -> int:
        """Stop the flush task and write what is left, retrying up to `grace_s` seconds.

        Returns how many records could not be written (and are lost).
        """
        self._closing = True
        self._wake.set()
        self._full.set()
        self._stop.set()
        if self._task is not None:
            await self._task
            self._task = None
        deadline = time.monotonic() + grace_s
        while True:
            try:
                ok = await asyncio.wait_for(self.flush(), timeout=max(0.01, deadline - time.monotonic()))
            except TimeoutError:
                ok = False
            if ok or time.monotonic() >= deadline:
                break
            await asyncio.sleep(min(0.2, max(0.0, deadline - time.monotonic())))
        lost = self.buffered
        if lost:
            log.error("usage store unavailable at shutdown: %d usage record(s) lost", lost)
        return lost


def _estimate_all(records: list[UsageRecord]) -> None:
    for r in records:
        r.finish_estimate()
