"""What a reload means for spawned engines: a pure plan from (running engines, new config).

An engine matches a new spec when everything that shapes its launch is equal: the spec
without `replicas`, the pool's kind (embedding flags) and the engine's effective API key.
Per pool and spec:
- matching engines are kept, up to the new replica count;
- missing replicas are started;
- extra matching replicas are `surplus`: drained at once (the rest already serve);
- running engines that match no new spec are `replaced`: drained only once the pool's new
  engines are READY (new before old), or at once when nothing new is coming for the pool.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Protocol

from ..config import GatewayConfig, PoolConfig, SpawnConfig
from ..routing.backend import BackendState


class Running(Protocol):
    key: str
    pool_name: str
    state: BackendState


def spec_key(pool_cfg: PoolConfig, spec: SpawnConfig) -> str:
    body = spec.model_dump(mode="json", exclude={"replicas"})
    body["_kind"] = pool_cfg.kind
    body["api_key"] = spec.api_key or pool_cfg.api_key
    return json.dumps(body, sort_keys=True)


@dataclass
class PoolPlan:
    pool: str
    start: list[SpawnConfig] = field(default_factory=list)  # one entry per replica
    surplus: list[Running] = field(default_factory=list)
    replaced: list[Running] = field(default_factory=list)


# Which extra replica to let go first: one that is not serving yet costs nothing.
_DROP_ORDER = {
    BackendState.FAILED: 0,
    BackendState.STARTING: 1,
    BackendState.RESTARTING: 1,
    BackendState.UNHEALTHY: 2,
    BackendState.READY: 3,
}


def plan(running: Sequence[Running], cfg: GatewayConfig) -> dict[str, PoolPlan]:
    """Plans for every pool that has running engines or spawn specs (removed pools included)."""
    plans: dict[str, PoolPlan] = {}
    pools = {*(e.pool_name for e in running), *(n for n, p in cfg.pools.items() if p.spawn)}
    for name in sorted(pools):
        p = plans[name] = PoolPlan(name)
        mine = [e for e in running if e.pool_name == name]
        pool_cfg = cfg.pools.get(name)
        specs = pool_cfg.spawn if pool_cfg is not None else []
        claimed: set[int] = set()
        for spec in specs:
            assert pool_cfg is not None
            key = spec_key(pool_cfg, spec)
            matching = [e for e in mine if e.key == key and id(e) not in claimed]
            # Stable sort: keep the serving ones, let the not-yet-serving go first.
            matching.sort(key=lambda e: _DROP_ORDER.get(e.state, 3), reverse=True)
            keep, extra = matching[: spec.replicas], matching[spec.replicas :]
            claimed.update(id(e) for e in matching)
            p.surplus += extra
            p.start += [spec] * (spec.replicas - len(keep))
        p.replaced = [e for e in mine if id(e) not in claimed]
    return plans
