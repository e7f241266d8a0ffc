"""Balancing policies: pick one backend from candidates that are ready and have spare capacity.

A policy is a small object with `choose(candidates) -> Backend`. It is a pure function of
the candidates' stats (plus its own cursor or RNG); it never filters, counts or waits:
`backends.Pool` does filtering and load accounting the same way for every policy.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    from ..backend import Backend


class Balancer(Protocol):
    name: str

    def choose(self, candidates: Sequence[Backend]) -> Backend:
        """`candidates` is never empty."""
        ...


def make_balancer(name: str, seed: int | None = None) -> Balancer:
    from .least_outstanding import LeastOutstanding
    from .random import RandomChoice
    from .round_robin import RoundRobin
    from .speed_aware import SpeedAware

    policies: dict[str, type] = {
        "least_outstanding": LeastOutstanding,
        "round_robin": RoundRobin,
        "random": RandomChoice,
        "speed_aware": SpeedAware,
    }
    try:
        cls = policies[name]
    except KeyError:
        raise ValueError(f"unknown balancer {name!r}; choose from {', '.join(policies)}") from None
    return cls(seed) if seed is not None else cls()  # type: ignore[no-any-return]
