"""Expected-completion-time policy: send a request where a typical request would finish first.

Queue length alone treats a 25 tok/s engine like a 100 tok/s one. For each candidate we
estimate when a new request would finish there, from what the gateway observed and what
the engine reports:

    service  = max(ewma_ttft, REFERENCE_TOKENS * ewma_tpot)   # a typical request, alone
    ahead    = max(outstanding, engine_running + engine_waiting)
    capacity = the engine's batch size if known, else 1
    cost     = service * (1 + max(0, ahead + 1 - capacity) / capacity)

`ahead` counts what is already at the engine: our in-flight requests, or the engine's own
running + waiting gauges when those are higher (traffic that did not come through this
gateway: other replicas, direct clients). Requests beyond the batch wait their turn, and
each batch-worth ahead of us costs one more service time.

When the batch size is unknown the capacity is 1: shortest expected delay, (ahead + 1)
service times, a classic policy for servers of unequal speed that never needs the batch
size and degrades gracefully to least-outstanding when speeds are equal or unknown. It
must be a stable per-backend number: inferring it from the live gauges alone (the batch
is full when something waits) makes a backend look cheaper the moment it starts
queueing, and herds traffic onto it (benchmarks/scenarios/model.py shows both).

Backends without observations yet get the pool's best known speed, so a new backend is
tried rather than starved, and the smallest known batch size, so costs stay comparable
(a batch of 1 next to a batch of 8 would make the unknown one look 8x dearer).
Estimates age: one last refreshed SPEED_HALF_LIFE_S seconds before the pool's freshest
counts half, the other half being the freshest estimate. Speeds measured at different
times are taken under different conditions (engines sharing a host slow each other down;
a GPU throttles), and a replica that gets no traffic is never re-measured: without
ageing, a replica rated slow while its neighbour was saturating the shared cores, next to
a busy replica last measured when all was quiet, would lose every request to the busy
one. Under steady traffic every estimate is seconds old and a real difference stays.

Non-stream requests report no TTFT and their duration per output token as TPOT
(`Backend.observe`), so a pool serving only non-stream traffic is still compared by speed.
Ties (equal cost) are broken at random.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from typing import TYPE_CHECKING

from . import LoadOnly

if TYPE_CHECKING:
    from ..backend import Backend
    from ..request import RouteRequest

# Output length, in tokens, that weighs time-per-token against time-to-first-token. Only
# the ratio matters; it is the order of a short chat answer.
REFERENCE_TOKENS = 64
# Seconds after which an estimate not refreshed counts half (see the module's note).
SPEED_HALF_LIFE_S = 15.0


def engine_capacity(b: Backend) -> int | None:
    """The engine's batch size if something told us, else None."""
    # `Backend.engine_capacity` is filled by whoever knows it (a launcher, a /metrics
    # scraper remembering the most requests the engine ran at once while others waited).
    cap = b.engine_capacity
    return cap if cap is not None and cap >= 1 else None


def expected_seconds(
    b: Backend, default_ttft: float | None, default_tpot: float | None, default_capacity: int | None = None,
    ttft: float | None = None, tpot: float | None = None,
) -> float:
    """Estimated time for a typical new request sent to `b` now to finish (queue + service).

    `ttft`/`tpot` replace the backend's own estimates when given (aged ones)."""
    ttft = ttft if ttft is not None else b.ewma_ttft if b.ewma_ttft is not None else default_ttft
    tpot = tpot if tpot is not None else b.ewma_tpot if b.ewma_tpot is not None else default_tpot
    service = max(ttft or 0.0, REFERENCE_TOKENS * (tpot or 0.0))
    if service <= 0.0:
        service = 1.0  # nothing observed anywhere yet: compare queues only
    ahead = max(float(b.outstanding), b.engine_running + b.engine_waiting)
    cap = engine_capacity(b) or default_capacity or 1
    return service * (1.0 + max(0.0, ahead + 1.0 - cap) / cap)


def aged(own: float | None, freshest: float | None, age: float) -> float | None:
    """An estimate taken `age` seconds before the pool's freshest, blended toward it."""
    if own is None or freshest is None or age <= 0.0:
        return own
    w = 0.5 ** (age / SPEED_HALF_LIFE_S)
    return w * own + (1.0 - w) * freshest


class SpeedAware(LoadOnly):
    name = "speed_aware"

    def __init__(self, seed: int | None = None) -> None:
        self._rng = random.Random(seed)

    def choose(self, candidates: Sequence[Backend], request: RouteRequest | None = None) -> Backend:
        best = self.cheapest(candidates)
        return best[0] if len(best) == 1 else self._rng.choice(best)

    def cheapest(self, candidates: Sequence[Backend]) -> list[Backend]:
        """The candidates of least expected completion time (several on a tie)."""
        ttfts = [b.ewma_ttft for b in candidates if b.ewma_ttft is not None]
        tpots = [b.ewma_tpot for b in candidates if b.ewma_tpot is not None]
        caps = [c for c in map(engine_capacity, candidates) if c is not None]
        default_ttft = min(ttfts) if ttfts else None
        default_tpot = min(tpots) if tpots else None
        # One backend's batch size known and another's not must not make the unknown one
        # look 8x dearer (costs would be in different units): borrow the smallest known.
        default_cap = min(caps) if caps else None
        # The freshest estimate of each kind: what the others age toward.
        fresh_ttft = fresh_tpot = None
        fresh_ttft_at = fresh_tpot_at = float("-inf")
        for b in candidates:
            if b.ewma_ttft is not None and b.ttft_observed_at > fresh_ttft_at:
                fresh_ttft, fresh_ttft_at = b.ewma_ttft, b.ttft_observed_at
            if b.ewma_tpot is not None and b.tpot_observed_at > fresh_tpot_at:
                fresh_tpot, fresh_tpot_at = b.ewma_tpot, b.tpot_observed_at
        best: list[Backend] = []
        best_cost = float("inf")
        for b in candidates:
            cost = expected_seconds(b, default_ttft, default_tpot, default_cap,
                                    aged(b.ewma_ttft, fresh_ttft, fresh_ttft_at - b.ttft_observed_at),
                                    aged(b.ewma_tpot, fresh_tpot, fresh_tpot_at - b.tpot_observed_at))
            if cost < best_cost:
                best, best_cost = [b], cost
            elif cost == best_cost:
                best.append(b)
        return best
