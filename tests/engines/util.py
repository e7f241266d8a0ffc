"""Shared helpers for engine tests: a GatewayState from YAML, polling with a deadline."""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Any, TypeVar

from gateway import config as config_mod
from gateway.keys.auth import KeyRing
from gateway.state import GatewayState, build_names, build_pools

T = TypeVar("T")
FAKE_ENGINE = str(Path(__file__).with_name("fake_engine.py"))


def make_state(yaml_text: str, config_path: str | None = None) -> GatewayState:
    cfg = config_mod.loads(yaml_text)
    return GatewayState(cfg, config_path, build_pools(cfg), build_names(cfg), KeyRing.from_config(cfg.auth))


def run(coro: Coroutine[Any, Any, T], timeout: float = 60.0) -> T:
    return asyncio.run(asyncio.wait_for(coro, timeout))


async def until(pred: Callable[[], bool], timeout: float = 10.0, what: str = "condition") -> None:  # noqa: ASYNC109
    """Poll `pred` every 20 ms (tests only: the supervisor itself waits on events)."""
    deadline = time.monotonic() + timeout
    while not pred():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        await asyncio.sleep(0.02)


def pid_gone(pid: int) -> bool:
    """Not running: no such process, or a zombie nobody has reaped yet."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] == "Z"
    except FileNotFoundError:
        return True


def environ_of(pid: int) -> dict[str, str]:
    with open(f"/proc/{pid}/environ", "rb") as f:
        items = [x.decode(errors="replace").split("=", 1) for x in f.read().split(b"\0") if b"=" in x]
    return {k: v for k, v in items}


def kill_if_alive(pid: int | None) -> None:
    if pid is None:
        return
    try:
        os.kill(pid, 9)
    except ProcessLookupError:
        pass
