"""The gateway's runtime state, built by the app factory and handed around (no module globals).

Subsystems attach here at start-up (`app.lifespan`): the supervisor owns engine
processes, the meter owns the usage ledger, the limiter owns rate limits. Each is
`None` when not configured, and the request path treats `None` as "skip this step".
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from .config import GatewayConfig
from .context import RequestIds
from .routing.affinity import ResponseAffinity
from .routing.pool import Pool, endpoint_backends

if TYPE_CHECKING:
    import aiohttp

    from .engines.supervisor import Supervisor
    from .keys.auth import KeyRing
    from .keys.sync import KeySync
    from .metering import Meter
    from .metrics import Metrics
    from .ratelimit import Limiter


@dataclass(eq=False)
class GatewayState:
    config: GatewayConfig
    config_path: str | None
    pools: dict[str, Pool]
    # pool name and every alias -> pool name
    names: dict[str, str]
    keyring: KeyRing
    http: aiohttp.ClientSession | None = None  # or proxy.client.RawSession, which has the same calls
    supervisor: Supervisor | None = None
    meter: Meter | None = None
    limiter: Limiter | None = None
    metrics: Metrics | None = None
    key_sync: KeySync | None = None  # dynamic keys: loaded from the shared store, polled
    wake_task: asyncio.Task[None] | None = None  # routing.pool.wake_pools, owned by the lifespan
    draining: bool = False
    # False when the embedding process runs engines itself (tests, benchmarks): a reload
    # must not start a supervisor behind its back.
    spawn_engines: bool = True
    request_ids: RequestIds = field(default_factory=RequestIds)
    # Which backend stored each Responses API id (in process; the lifespan adds Redis).
    affinity: ResponseAffinity = field(default_factory=ResponseAffinity)

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
