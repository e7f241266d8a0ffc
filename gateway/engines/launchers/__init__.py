"""The launcher registry: engine name -> `Launcher` (one module per engine)."""

from __future__ import annotations

from collections.abc import Mapping

from ...config import EnginesConfig, PoolConfig, SpawnConfig
from . import command, llamacpp, lmdeploy, sglang, sim, vllm
from .base import Launch, Launcher, LaunchError, LaunchRequest

LAUNCHERS: dict[str, Launcher] = {
    m.LAUNCHER.name: m.LAUNCHER for m in (vllm, sglang, lmdeploy, llamacpp, sim, command)
}

__all__ = ["LAUNCHERS", "Launch", "LaunchError", "LaunchRequest", "Launcher", "build", "get", "request_for"]


def get(engine: str) -> Launcher:
    try:
        return LAUNCHERS[engine]
    except KeyError:
        raise LaunchError(f"unknown engine {engine!r}; known: {', '.join(LAUNCHERS)}") from None


def request_for(
    pool: str,
    pool_cfg: PoolConfig,
    spec: SpawnConfig,
    engines: EnginesConfig,
    port: int,
    devices: tuple[str, ...],
) -> LaunchRequest:
    return LaunchRequest(
        pool=pool,
        kind=pool_cfg.kind,
        spec=spec,
        port=port,
        devices=devices,
        api_key=spec.api_key or pool_cfg.api_key,
        device_env=tuple(engines.device_env),
    )


def build(req: LaunchRequest, base_env: Mapping[str, str] | None = None) -> Launch:
    """The exact argv and env for one replica. Raises LaunchError for specs that cannot run."""
    return get(req.spec.engine).launch(req, base_env)
