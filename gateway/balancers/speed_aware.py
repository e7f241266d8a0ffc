"""Expected-completion-time policy: queue depth weighted by each backend's observed speed.

Queue length alone treats a 23 tok/s engine like a 35 tok/s one (deployments.md #4). We
estimate how long a new request would take on each backend: the work already queued there
(ours plus the engine's own waiting requests) times its observed seconds per token, plus
its time to first token. Backends without observations yet use the pool's best known
speed, so a new backend is tried rather than starved.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from ..backends import Backend


class SpeedAware:
    name = "speed_aware"

    def __init__(self, seed: int | None = None) -> None:
        self._rng = random.Random(seed)

    def choose(self, candidates: Sequence[Backend]) -> Backend:
        known = [b.ewma_tpot for b in candidates if b.ewma_tpot is not None]
        default_tpot = min(known) if known else 1.0
        best: list[Backend] = []
        best_cost = float("inf")
        for b in candidates:
            tpot = b.ewma_tpot if b.ewma_tpot is not None else default_tpot
            # A continuous-batching engine runs up to max_concurrency at once; what waits
            # beyond that adds whole request durations, what runs shares the batch.
            queued = b.outstanding + b.engine_waiting
            over = max(0.0, queued + 1 - b.max_concurrency)
            cost = tpot * (1.0 + queued / b.max_concurrency) + over * tpot * 10
            if cost < best_cost:
                best, best_cost = [b], cost
            elif cost == best_cost:
                best.append(b)
        return best[0] if len(best) == 1 else self._rng.choice(best)
