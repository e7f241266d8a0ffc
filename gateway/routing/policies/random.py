"""Uniform random choice; a baseline for the balancing benchmark."""

from __future__ import annotations

import random as _random
from collections.abc import Sequence
from typing import TYPE_CHECKING

from . import LoadOnly

if TYPE_CHECKING:
    from ..backend import Backend
    from ..request import RouteRequest


class RandomChoice(LoadOnly):
    name = "random"

    def __init__(self, seed: int | None = None) -> None:
        self._rng = _random.Random(seed)

    def choose(self, candidates: Sequence[Backend], request: RouteRequest | None = None) -> Backend:
        return self._rng.choice(list(candidates))
