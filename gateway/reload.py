"""Config reload (SIGHUP or POST /admin/reload) without failing a single request.

Steps, in order:
1. Load and validate the new file. Any problem raises `ConfigError` before anything
   changes: the running config keeps serving.
2. Pools, in one synchronous step (no await, so no request sees half a change):
   new pools are created; existing pools keep their `Pool` object (in-flight requests
   release into it) and get the new settings, a new balancer only if its name changed;
   external endpoints are added or leave routing (their in-flight requests finish);
   removed pools leave the name table, their endpoints leave at once.
3. Aliases, keys (`KeyRing.load_config`: dynamic keys stay) and `state.config`.
4. Spawned engines (`Supervisor.apply`): new ones start and join when READY; removed
   ones leave routing at once, finish in-flight requests (up to server.drain_seconds),
   then stop; changed ones are replaced new-before-old.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from . import config as config_mod
from .config import ConfigError, GatewayConfig
from .metering.model_tokenizer import ModelTokenizer
from .routing.pool import Pool, endpoint_backends
from .state import GatewayState, build_names

log = logging.getLogger("gateway.reload")


async def reload(state: GatewayState, path: str | None = None) -> dict[str, Any]:
    """Apply the config at `path` (default: the file the gateway was started with).

    Raises ConfigError (old config untouched) when the file is missing or invalid.
    Returns {"added": [...], "removed": [...], "changed": [...]} describing what changed;
    engines being started are listed at once, they join their pool when READY.
    """
    path = path or state.config_path
    if path is None:
        raise ConfigError("the gateway was started without a config file; nothing to reload from")
    new = await asyncio.to_thread(config_mod.load, path)  # file I/O off the event loop
    summary: dict[str, list[str]] = {"added": [], "removed": [], "changed": []}

    _apply_pools(state, new, summary)
    state.names = build_names(new)
    state.keyring.load_config(new.auth)
    if new.auth != state.config.auth:
        summary["changed"].append("auth")
    state.config = new
    state.config_path = str(path)

    await _apply_engines(state, new, summary)
    log.info("config reloaded from %s: %s", path, summary)
    return summary


def _apply_pools(state: GatewayState, new: GatewayConfig, summary: dict[str, list[str]]) -> None:
    """Step 2: create/update/remove pools and their endpoints (the supervisor probes them)."""
    for name, pcfg in new.pools.items():
        pool = state.pools.get(name)
        if pool is None:
            pool = Pool(name, pcfg)
            pool.shared_routes.attach(state.limiter.redis if state.limiter is not None else None)
            for b in endpoint_backends(name, pcfg):
                pool.add(b)
            state.pools[name] = pool
            summary["added"].append(f"pool {name}")
            continue
        old = pool.cfg
        if _without_spawn(old) != _without_spawn(pcfg):
            summary["changed"].append(f"pool {name}")
        if pcfg.balancer != old.balancer or pcfg.prefix_routing != old.prefix_routing:
            pool.balancer = pool.make_balancer(pcfg)
        pool.cfg = pcfg
        if pcfg.tokenizer_path != pool.tokenizer.path:
            pool.tokenizer = ModelTokenizer(pcfg.tokenizer_path)
        for b in pool.backends:
            b.max_concurrency = pcfg.max_concurrency
            if b.source != "spawned":
                b.api_key = pcfg.api_key
        wanted = {b.id: b for b in endpoint_backends(name, pcfg)}
        for b in [b for b in pool.backends if b.source != "spawned" and b.id not in wanted]:
            pool.remove(b)  # in-flight requests keep their reference and finish
            summary["removed"].append(b.id)
        have = {b.id for b in pool.backends}
        for bid, b in wanted.items():
            if bid not in have:
                pool.add(b)
                summary["added"].append(bid)
        pool.wake()  # more capacity or a new endpoint: queued requests may proceed
    for name in [n for n in state.pools if n not in new.pools]:
        pool = state.pools.pop(name)
        for b in [b for b in pool.backends if b.source != "spawned"]:
            pool.remove(b)
        summary["removed"].append(f"pool {name}")


def _without_spawn(pcfg: Any) -> Any:
    # Engine spec changes are reported per engine by the supervisor.
    return pcfg.model_copy(update={"spawn": []})


async def _apply_engines(state: GatewayState, new: GatewayConfig, summary: dict[str, list[str]]) -> None:
    """Step 4: hand the spawned-engine diff (and endpoint probes) to the supervisor."""
    if state.supervisor is None:
        wants_engines = any(p.spawn for p in new.pools.values())
        if not wants_engines or not state.spawn_engines:
            return
        from .engines.supervisor import Supervisor

        state.supervisor = Supervisor(state)
        await state.supervisor.start()
        summary["added"] += [row["id"] for row in state.supervisor.status() if row["source"] == "spawned"]
        return
    result = await state.supervisor.apply(new)
    for k in ("added", "removed", "changed"):
        summary[k] += result.get(k, [])
