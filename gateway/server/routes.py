"""The inference route table: one typed entry per route, read by the app and the pipeline.

A new route is one `Route` here (plus its answer rewrites in proxy/plan.py when it needs
any), not a new branch in the dispatcher: the app looks the path up, the pipeline reads
which pools may serve it, where to send it and how to shape its errors.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

from ..config import PoolKind
from ..errors import GatewayError

# How a route's own errors (auth, validation, limits, upstream) are shaped for the client.
ErrorDialect = Literal["openai"]

# Error body encoders by dialect; a dialect is one entry here and one value of ErrorDialect.
ERROR_BODIES: dict[str, Callable[[GatewayError], bytes]] = {"openai": GatewayError.body}


@dataclass(frozen=True, slots=True)
class Route:
    path: str  # the path clients call, e.g. "/v1/chat/completions"
    endpoint: str  # its name in metrics, the usage ledger and proxy/plan.py
    upstream_path: str  # appended to the backend's base URL (which ends in /v1)
    kinds: frozenset[PoolKind]  # pool kinds that serve it; others get a 400 naming the right route
    streams: bool = True  # whether `"stream": true` is honoured
    errors: ErrorDialect = "openai"
    method: str = "POST"


def _routes(*routes: Route) -> dict[str, Route]:
    return {r.path: r for r in routes}


CHAT = frozenset[PoolKind]({"chat"})
EMBEDDING = frozenset[PoolKind]({"embedding"})

ROUTES: dict[str, Route] = _routes(
    Route("/v1/chat/completions", "chat", "/chat/completions", CHAT),
    Route("/v1/completions", "completions", "/completions", CHAT),
    Route("/v1/embeddings", "embeddings", "/embeddings", EMBEDDING, streams=False),
)


def paths_for(kind: PoolKind) -> list[str]:
    """The routes a pool of this kind serves, in table order (for error messages)."""
    return [r.path for r in ROUTES.values() if kind in r.kinds]
