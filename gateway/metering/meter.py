"""The meter: one usage record per request, buffered and written off the request path.

Lifecycle: `Meter.start(cfg)` opens the store named by `cfg.store` and starts the flush
task; `record(ctx)` is called once per finished request and never blocks or raises;
`close()` flushes what is left (bounded wait) and closes the store.
"""

from __future__ import annotations

import logging
import time
from typing import TYPE_CHECKING, Any

from .record import UsageRecord, from_context
from .store import Store, open_store
from .writer import Writer

if TYPE_CHECKING:
    from gateway.config import GatewayConfig
    from gateway.context import RequestContext

log = logging.getLogger("gateway.metering")

CLOSE_TIMEOUT_S = 10.0


class Meter:
    def __init__(
        self, store: Store, buffer_max: int = 100_000, flush_interval: float = 0.1, enabled: bool = True
    ) -> None:
        """A meter over an open store. Its flush task starts with `start_writer()` (inside a loop)."""
        self.store = store
        self.writer = Writer(store, buffer_max, flush_interval, on_estimated=self._on_estimated)
        self.enabled = enabled
        # Tokens of records the gateway had to estimate, by (pool, key): the metrics
        # collector adds them to the token counters (the hot path only sees engine usage).
        self.estimated_tokens: dict[tuple[str, str], list[int]] = {}
        self.recorded = 0  # records accepted since start (written, buffered or dropped later)
        self._last_error_log = 0.0

    @classmethod
    async def start(cls, cfg: GatewayConfig) -> Meter:
        m = cfg.metering
        meter = cls(await open_store(cfg.store), m.buffer_max, m.flush_interval, m.enabled)
        meter.start_writer()
        return meter

    def start_writer(self) -> None:
        self.writer.start()

    # --- request path -----------------------------------------------------------------

    def record(self, ctx: RequestContext) -> None:
        """Buffer the usage record of a finished request. Never blocks, never raises."""
        if not self.enabled:
            return
        try:
            self.writer.add(from_context(ctx, lazy=True))
            self.recorded += 1
        except Exception:
            now = time.monotonic()
            if now - self._last_error_log > 10.0:
                self._last_error_log = now
                log.exception(
                    "could not build the usage record of request %s", getattr(ctx, "request_id", "?")
                )

    def _on_estimated(self, records: list[UsageRecord]) -> None:
        for r in records:
            if r.estimated:
                acc = self.estimated_tokens.setdefault((r.pool or "_none", r.key or "_none"), [0, 0])
                acc[0] += r.prompt_tokens
                acc[1] += r.completion_tokens

    # --- state for metrics ------------------------------------------------------------

    @property
    def buffered(self) -> int:
        return self.writer.buffered

    @property
    def dropped(self) -> int:
        return self.writer.dropped

    # --- reads and lifecycle ----------------------------------------------------------

    async def flush(self) -> bool:
        """Write everything buffered now (tests, admin). False if the store is failing."""
        return await self.writer.flush()

    async def query(self, group_by: str, since: float | None, until: float | None) -> list[dict[str, Any]]:
        return await self.store.query(group_by, since, until)

    async def spend(self, key: str, since: float | None) -> int:
        """Tokens `key` used since `since` according to the ledger (budget seeding)."""
        return await self.store.spend(key, since)

    async def close(self, grace_s: float = CLOSE_TIMEOUT_S) -> None:
        try:
            await self.writer.close(grace_s)
        finally:
            await self.store.close()
