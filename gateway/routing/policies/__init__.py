"""Balancing policies: pick one backend from candidates that are ready and have spare capacity.

Every policy has the same interface (`Balancer`): `choose(candidates, request)` and three
hooks the pool calls for every request, whatever the policy:

- `prepare(request)` before `choose`: None, or an awaitable the pool waits for (bounded by
  the policy) to fetch shared state `choose` then reads synchronously (cache_aware reads
  another replica's record of the conversation);
- `on_dispatch(backend, request)` right after the pool counted the request on `backend`;
- `on_complete(backend, request, completion)` exactly once per dispatch, after the pool
  uncounted it; `completion` is None when the request never produced an answer
  (connection failure, cancelled while queued, client gone before the first byte).

A policy never filters, counts or waits: `routing.pool.Pool` filters (ready, capacity,
retry exclusions) and does load accounting the same way for every policy, and the
router never looks at a policy's name. `choose` and the hooks run on the event loop and
must not block.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    from collections.abc import Awaitable

    from ...config import PrefixRoutingConfig
    from ..backend import Backend
    from ..request import Completion, RouteRequest
    from ..shared_routes import SharedRoutes


class Balancer(Protocol):
    name: str

    def prepare(self, request: RouteRequest) -> Awaitable[object] | None: ...

    def choose(self, candidates: Sequence[Backend], request: RouteRequest) -> Backend:
        """`candidates` is never empty."""
        ...

    def on_dispatch(self, backend: Backend, request: RouteRequest) -> None: ...

    def on_complete(self, backend: Backend, request: RouteRequest, completion: Completion | None) -> None: ...


class LoadOnly:
    """Hooks for policies that look at load alone (the pool already did the accounting)."""

    def prepare(self, request: RouteRequest) -> Awaitable[object] | None:
        return None

    def on_dispatch(self, backend: Backend, request: RouteRequest) -> None:
        return None

    def on_complete(self, backend: Backend, request: RouteRequest, completion: Completion | None) -> None:
        return None


POLICY_NAMES = ("cache_aware", "least_outstanding", "round_robin", "random", "speed_aware")


def make_balancer(
    name: str, seed: int | None = None, prefix: PrefixRoutingConfig | None = None, shared: SharedRoutes | None = None
) -> Balancer:
    from .cache_aware import CacheAware
    from .least_outstanding import LeastOutstanding
    from .random import RandomChoice
    from .round_robin import RoundRobin
    from .speed_aware import SpeedAware

    if name == "cache_aware":
        return CacheAware(seed, prefix, shared=shared)
    policies: dict[str, type] = {
        "least_outstanding": LeastOutstanding,
        "round_robin": RoundRobin,
        "random": RandomChoice,
        "speed_aware": SpeedAware,
    }
    try:
        cls = policies[name]
    except KeyError:
        raise ValueError(f"unknown balancer {name!r}; choose from {', '.join(POLICY_NAMES)}") from None
    return cls(seed) if seed is not None else cls()  # type: ignore[no-any-return]
