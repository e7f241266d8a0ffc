"""Backends and pools: where a request can go, and the per-pool admission queue.

A `Backend` is one OpenAI-compatible base URL, whether the gateway spawned the engine
behind it (engines/supervisor) or it is an external endpoint. Both sit in one `Pool`.

Load accounting is the same for every balancing policy and lives here: `outstanding`
is incremented when a request is dispatched to a backend and decremented exactly once
in `Pool.release`, which callers run in `finally` on every path.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from dataclasses import dataclass, field
from enum import StrEnum

from ..config import PoolConfig
from ..errors import GatewayError, service_unavailable
from .policies import Balancer, make_balancer


class BackendState(StrEnum):
    STARTING = "starting"
    READY = "ready"
    UNHEALTHY = "unhealthy"
    RESTARTING = "restarting"
    DRAINING = "draining"
    STOPPED = "stopped"
    FAILED = "failed"


# After a connection failure an external endpoint sits out this long before it is tried
# again (spawned engines are brought back by their health checks instead).
PASSIVE_COOLDOWN_S = 5.0


@dataclass(eq=False)
class Backend:
    id: str
    pool: str
    url: str  # base URL ending in /v1
    max_concurrency: int
    api_key: str | None = None
    source: str = "endpoint"  # "endpoint" | "spawned"
    state: BackendState = BackendState.READY
    outstanding: int = 0
    # Engine-reported queue (from its /metrics), for traffic that did not come through us.
    engine_running: float = 0.0
    engine_waiting: float = 0.0
    # Observed speed, exponentially weighted: seconds per output token and to first token.
    ewma_tpot: float | None = None
    ewma_ttft: float | None = None
    down_until: float = 0.0
    last_error: str | None = None
    served_model: str | None = None  # first name the engine serves, when known
    restarts: int = 0  # times the supervisor restarted the engine behind it
    extra: dict[str, object] = field(default_factory=dict)

    @property
    def routable(self) -> bool:
        return self.state is BackendState.READY and self.down_until <= time.monotonic()

    @property
    def has_capacity(self) -> bool:
        return self.outstanding < self.max_concurrency

    def mark_connect_failure(self, reason: str) -> None:
        """Passive health: connection refused/reset takes the backend out at once."""
        self.last_error = reason
        self.down_until = time.monotonic() + PASSIVE_COOLDOWN_S

    def observe(self, ttft: float | None, duration: float, output_tokens: int) -> None:
        """Feed a finished request's timing into the speed estimates (alpha 0.2).

        `ttft` is None for non-stream requests, whose first byte is also their last.
        """
        tpot: float | None = None
        if ttft is not None:
            self.ewma_ttft = ttft if self.ewma_ttft is None else 0.8 * self.ewma_ttft + 0.2 * ttft
            if output_tokens > 1 and duration > ttft:
                tpot = (duration - ttft) / (output_tokens - 1)
        elif output_tokens > 0:
            # Non-stream: only the whole duration is known; prefill is folded into the rate.
            tpot = duration / output_tokens
        if tpot is not None:
            self.ewma_tpot = tpot if self.ewma_tpot is None else 0.8 * self.ewma_tpot + 0.2 * tpot


class QueueFull(GatewayError):
    def __init__(self, pool: str) -> None:
        super().__init__(
            429,
            f"Pool `{pool}` is at capacity and its queue is full; retry shortly.",
            "pool_queue_full",
            headers={"retry-after": "1"},
        )


class Pool:
    """The backends serving one model and the FIFO of requests waiting for a slot.

    `acquire` blocks until a backend with spare capacity is available, the queue timeout
    passes (503 with Retry-After), or the queue is full (429). It never blocks the loop.
    """

    def __init__(self, name: str, cfg: PoolConfig, balancer: Balancer | None = None) -> None:
        self.name = name
        self.cfg = cfg
        self.backends: list[Backend] = []
        self.balancer = balancer or make_balancer(cfg.balancer)
        self._waiters: deque[tuple[asyncio.Future[Backend], frozenset[Backend]]] = deque()

    # --- membership (called by the supervisor / reload) ---

    def add(self, backend: Backend) -> None:
        self.backends.append(backend)
        self.wake()

    def remove(self, backend: Backend) -> None:
        if backend in self.backends:
            self.backends.remove(backend)

    def get(self, backend_id: str) -> Backend | None:
        return next((b for b in self.backends if b.id == backend_id), None)

    @property
    def served_default(self) -> str:
        """The model name to send a backend that has not told us what it serves."""
        if self.cfg.upstream_model:
            return self.cfg.upstream_model
        if self.cfg.spawn and self.cfg.spawn[0].served_names:
            return self.cfg.spawn[0].served_names[0]
        return self.name

    @property
    def queued(self) -> int:
        return len(self._waiters)

    @property
    def outstanding(self) -> int:
        return sum(b.outstanding for b in self.backends)

    # --- admission ---

    def _pick(self, exclude: frozenset[Backend]) -> Backend | None:
        candidates = [b for b in self.backends if b.routable and b.has_capacity and b not in exclude]
        if not candidates:
            return None
        return self.balancer.choose(candidates)

    async def acquire(self, exclude: frozenset[Backend] = frozenset()) -> Backend:
        if not self._waiters:
            b = self._pick(exclude)
            if b is not None:
                b.outstanding += 1
                return b
        if exclude and not any(b.routable and b not in exclude for b in self.backends):
            # A retry with nowhere else to go: do not queue behind fresh requests.
            raise service_unavailable(f"No other backend of pool `{self.name}` is available.")
        if len(self._waiters) >= self.cfg.queue.max_size:
            raise QueueFull(self.name)
        fut: asyncio.Future[Backend] = asyncio.get_running_loop().create_future()
        entry = (fut, exclude)
        self._waiters.append(entry)
        try:
            async with asyncio.timeout(self.cfg.queue.timeout):
                return await fut
        except (TimeoutError, asyncio.CancelledError) as e:
            if fut.done() and not fut.cancelled():
                self.release(fut.result())  # granted in the same instant we gave up
            else:
                fut.cancel()
            try:
                self._waiters.remove(entry)
            except ValueError:
                pass
            if isinstance(e, asyncio.CancelledError):
                raise
            ready = any(b.routable for b in self.backends)
            msg = (
                f"Pool `{self.name}`: every backend stayed busy for {self.cfg.queue.timeout:g}s."
                if ready
                else f"Pool `{self.name}` has no ready backend (engines may still be starting)."
            )
            raise service_unavailable(msg, retry_after=5 if not ready else 1) from None

    def release(self, backend: Backend) -> None:
        backend.outstanding -= 1
        self.wake()

    def wake(self) -> None:
        """Hand freed capacity to waiters in FIFO order."""
        while self._waiters:
            fut, exclude = self._waiters[0]
            if fut.done():
                self._waiters.popleft()
                continue
            b = self._pick(exclude)
            if b is None:
                return
            self._waiters.popleft()
            b.outstanding += 1
            fut.set_result(b)


def endpoint_backends(name: str, cfg: PoolConfig) -> list[Backend]:
    return [
        Backend(id=f"{name}@{url}", pool=name, url=url, max_concurrency=cfg.max_concurrency, api_key=cfg.api_key)
        for url in cfg.endpoints
    ]


def monotonic() -> float:
    return time.monotonic()
