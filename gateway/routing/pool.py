"""Pools: the backends serving one model and the per-pool admission queue.

Load accounting is the same for every balancing policy and lives here: `outstanding`
is incremented when a request is dispatched to a backend and decremented exactly once
in `Pool.release`, which callers run in `finally` on every path. Around it the pool
calls the policy's hooks (`on_dispatch`, `on_complete`) the same way for every policy.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import Callable
from typing import Protocol

from ..config import PoolConfig
from ..errors import GatewayError, service_unavailable
from ..metering.model_tokenizer import ModelTokenizer
from .backend import Backend, Refusal
from .policies import Balancer, make_balancer
from .request import Completion, RouteRequest, bare_request


class QueueFull(GatewayError):
    def __init__(self, pool: str) -> None:
        super().__init__(
            429,
            f"Pool `{pool}` is at capacity and its queue is full; retry shortly.",
            "pool_queue_full",
            headers={"retry-after": "1"},
        )


class Demand(Protocol):
    """Engines started on demand (engines/residency.py): told when a request must queue."""

    def needed(self, pool: Pool) -> float | None:
        """Start or wake the pool's engines if none serves; how long to wait (None: queue.timeout)."""
        ...

    def waited(self, pool: Pool, seconds: float) -> None:
        """A request that waited for a start or wake got its backend after `seconds`."""
        ...


class Pool:
    """The backends serving one model and the FIFO of requests waiting for a slot.

    `acquire` blocks until a backend with spare capacity is available, the queue timeout
    passes (503 with Retry-After), or the queue is full (429). It never blocks the loop.
    """

    def __init__(self, name: str, cfg: PoolConfig, balancer: Balancer | None = None) -> None:
        self.name = name
        self.cfg = cfg
        self.backends: list[Backend] = []
        self.balancer = balancer or make_balancer(cfg.balancer, prefix=cfg.prefix_routing)
        # For estimates of what no engine reported; loads on first use, off the loop.
        self.tokenizer = ModelTokenizer(cfg.tokenizer_path)
        self._waiters: deque[tuple[asyncio.Future[Backend], frozenset[Backend], RouteRequest]] = deque()
        self.demand: Demand | None = None
        self.last_release = 0.0  # monotonic; idle timeouts count from here

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

    def refusal(self) -> Refusal | None:
        """What to answer when every backend refuses to serve until the config changes."""
        if not self.backends or not all(b.refusal is not None for b in self.backends):
            return None
        return self.backends[0].refusal

    # --- admission ---

    def route_request(self, endpoint: str, body: dict[str, object]) -> RouteRequest:
        """The view of a request that this pool's policy routes by."""
        return RouteRequest(endpoint, body, self.cfg.prefix_routing.block_bytes)

    def _dispatch(self, request: RouteRequest, exclude: frozenset[Backend]) -> Backend | None:
        """Pick a backend and count the request on it (None: no candidate now)."""
        candidates = [b for b in self.backends if b.routable and b.has_capacity and b not in exclude]
        if not candidates:
            return None
        b = self.balancer.choose(candidates, request)
        b.outstanding += 1
        self.balancer.on_dispatch(b, request)
        return b

    async def acquire(self, request: RouteRequest | None = None, exclude: frozenset[Backend] = frozenset()) -> Backend:
        """A backend for `request`, counted as in flight there until `release`."""
        request = request if request is not None else bare_request()
        if not self._waiters:
            b = self._dispatch(request, exclude)
            if b is not None:
                return b
        refusal = self.refusal()
        if refusal is not None:
            raise GatewayError(refusal.status, refusal.message, refusal.code)
        if exclude and not any(b.routable and b not in exclude for b in self.backends):
            # A retry with nowhere else to go: do not queue behind fresh requests.
            raise service_unavailable(f"No other backend of pool `{self.name}` is available.")
        if len(self._waiters) >= self.cfg.queue.max_size:
            raise QueueFull(self.name)
        # Engines started on demand: the wait is bounded by their start-up, not the queue
        # timeout. Raises (503) when they cannot start now (a failed start in its backoff).
        demand = self.demand
        load = demand.needed(self) if demand is not None else None
        timeout = self.cfg.queue.timeout if load is None else load
        fut: asyncio.Future[Backend] = asyncio.get_running_loop().create_future()
        entry = (fut, exclude, request)
        self._waiters.append(entry)
        queued_at = time.monotonic()
        try:
            async with asyncio.timeout(timeout):
                b = await fut
            if load is not None and demand is not None:
                demand.waited(self, time.monotonic() - queued_at)
            return b
        except (TimeoutError, asyncio.CancelledError) as e:
            if fut.done() and not fut.cancelled():
                self.release(fut.result(), request)  # granted in the same instant we gave up
            else:
                fut.cancel()
            try:
                self._waiters.remove(entry)
            except ValueError:
                pass
            if isinstance(e, asyncio.CancelledError):
                raise
            refusal = self.refusal()  # the engine failed for good while this request waited
            if refusal is not None:
                raise GatewayError(refusal.status, refusal.message, refusal.code) from None
            ready = any(b.routable for b in self.backends)
            msg = (
                f"Pool `{self.name}`: every backend stayed busy for {timeout:g}s."
                if ready
                else f"Pool `{self.name}` has no ready backend (engines may still be starting)."
            )
            raise service_unavailable(msg, retry_after=5 if not ready else 1) from None

    def release(self, backend: Backend, request: RouteRequest | None = None,
                completion: Completion | None = None) -> None:
        """Uncount a dispatched request (exactly once per `acquire`); `completion` is how
        it ended, None when no answer came back."""
        backend.outstanding -= 1
        self.last_release = time.monotonic()
        if completion is not None:
            if completion.ok:
                backend.observe(completion.ttft, completion.duration, completion.output_tokens)
            if completion.prompt_tokens:
                backend.cache.prompt_tokens += completion.prompt_tokens
                backend.cache.cached_tokens += completion.cached_tokens or 0
        self.balancer.on_complete(backend, request if request is not None else bare_request(), completion)
        self.wake()

    def fail_waiters(self, error: Callable[[], GatewayError]) -> int:
        """Answer every queued request with `error()` now (one instance each: each is raised
        in its own task): the engines they wait for cannot start. Returns how many waited."""
        failed = 0
        while self._waiters:
            fut, _, _ = self._waiters.popleft()
            if not fut.done():
                fut.set_exception(error())
                failed += 1
        return failed

    def wake(self) -> None:
        """Hand freed capacity to waiters in FIFO order; answer them at once when every
        backend refuses to serve (nothing would ever dispatch them)."""
        refusal = self.refusal() if self._waiters else None
        while refusal is not None and self._waiters:
            fut = self._waiters.popleft()[0]
            if not fut.done():
                fut.set_exception(GatewayError(refusal.status, refusal.message, refusal.code))
        while self._waiters:
            fut, exclude, request = self._waiters[0]
            if fut.done():
                self._waiters.popleft()
                continue
            b = self._dispatch(request, exclude)
            if b is None:
                return
            self._waiters.popleft()
            fut.set_result(b)


def endpoint_backends(name: str, cfg: PoolConfig) -> list[Backend]:
    return [
        Backend(id=f"{name}@{url}", pool=name, url=url, max_concurrency=cfg.max_concurrency, api_key=cfg.api_key)
        for url in cfg.endpoints
    ]


# How often queued requests re-check for a backend whose passive cool-off has ended.
WAKE_INTERVAL_S = 0.5


async def wake_pools(pools: dict[str, Pool]) -> None:
    """Backends that sat out a passive cool-off become routable by time passing alone;
    nudge the pools so queued requests notice without waiting for another release.
    Runs until cancelled (the app's lifespan owns the task)."""
    while True:
        await asyncio.sleep(WAKE_INTERVAL_S)
        for pool in pools.values():  # the live dict: reload adds and removes pools
            if pool.queued:
                pool.wake()
