"""Shortest queue: the backend with the least outstanding work relative to its capacity.

Ties (common at low load) are broken at random so two equal backends share traffic
instead of the first in the list taking everything.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from typing import TYPE_CHECKING

from . import LoadOnly

if TYPE_CHECKING:
    from ..backend import Backend
    from ..request import RouteRequest


class LeastOutstanding(LoadOnly):
    name = "least_outstanding"

    def __init__(self, seed: int | None = None) -> None:
        self._rng = random.Random(seed)

    def choose(self, candidates: Sequence[Backend], request: RouteRequest | None = None) -> Backend:
        best: list[Backend] = []
        best_load = float("inf")
        for b in candidates:
            # The engine's own count covers traffic from other gateway replicas and direct
            # clients; ours covers what it has not reported yet. Both include our requests,
            # so take the larger rather than the sum.
            load = max(b.outstanding, b.engine_running + b.engine_waiting) / b.max_concurrency
            if load < best_load:
                best, best_load = [b], load
            elif load == best_load:
                best.append(b)
        return best[0] if len(best) == 1 else self._rng.choice(best)
