"""Round robin over candidates; kept as a baseline for the balancing benchmark."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

from . import LoadOnly

if TYPE_CHECKING:
    from ..backend import Backend
    from ..request import RouteRequest


class RoundRobin(LoadOnly):
    name = "round_robin"

    def __init__(self, seed: int | None = None) -> None:
        self._next = 0

    def choose(self, candidates: Sequence[Backend], request: RouteRequest | None = None) -> Backend:
        b = candidates[self._next % len(candidates)]
        self._next += 1
        return b
