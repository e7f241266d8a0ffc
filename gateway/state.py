"""The gateway's runtime state, built by the app factory and handed around (no module globals).

Subsystems attach here at start-up (`app.lifespan`): the supervisor owns engine
processes, the meter owns the usage ledger, the limiter owns rate limits. Each is
`None` when not configured, and the request path treats `None` as "skip this step".
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from .config import GatewayConfig
from .routing.pool import Pool, endpoint_backends

if TYPE_CHECKING:
    import aiohttp

    from .keys.auth import KeyRing


@dataclass(eq=False)
class GatewayState:
    config: GatewayConfig
    config_path: str | None
    pools: dict[str, Pool]
    # pool name and every alias -> pool name
    names: dict[str, str]
    keyring: KeyRing
    http: aiohttp.ClientSession | None = None
    supervisor: Any = None  # engines.supervisor.Supervisor
    meter: Any = None  # metering.Meter
    limiter: Any = None  # ratelimit.Limiter
    metrics: Any = None  # metrics.Metrics
    draining: bool = False
    # False when the embedding process runs engines itself (tests, benchmarks): a reload
    # must not start a supervisor behind its back.
    spawn_engines: bool = True
    extras: dict[str, Any] = field(default_factory=dict)

    def resolve(self, model: str) -> Pool | None:
        name = self.names.get(model)
        return self.pools.get(name) if name is not None else None


def build_names(cfg: GatewayConfig) -> dict[str, str]:
    names: dict[str, str] = {}
    for name, pool in cfg.pools.items():
        names[name] = name
        for alias in pool.aliases:
            names.setdefault(alias, name)
    return names


def build_pools(cfg: GatewayConfig) -> dict[str, Pool]:
    """Pools with their external endpoints; spawned backends are added by the supervisor."""
    pools: dict[str, Pool] = {}
    for name, pcfg in cfg.pools.items():
        pool = Pool(name, pcfg)
        for b in endpoint_backends(name, pcfg):
            pool.add(b)
        pools[name] = pool
    return pools
