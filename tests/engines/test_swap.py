"""Two on-demand pools pinned to one simulated device take turns on it: no request fails,
none is aborted, and the engines never hold the device at the same time (the simulator's
device ledger would refuse the second: a wake would answer 500 and the gateway restart it).
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.gw import ADMIN_KEY, CLIENT_KEY, GatewayServer, auth_yaml

SIM_ARGS = '--ttft-ms, "5", --itl-ms, "10", --startup-seconds, "0.5", --wake-seconds, "0.3", --sleep-seconds, "0.1"'


def _cfg(tmp: Path, policy: str, sleep: int, min_residency: float = 1.0) -> str:
    pools = "".join(
        f"""  {name}:
    engine: sim
    model: /models/{name}
    args: [{SIM_ARGS}]
    start: on_demand
    sleep: {sleep}
    devices: ["0"]
    startup_timeout: 30
    health: {{interval: 0.2}}
"""
        for name in ("a", "b")
    )
    return auth_yaml() + f"""
store: "memory://"
server: {{drain_seconds: 10}}
engines:
  gpus: ["0"]
  port_range: [23000, 23999]
  log_dir: {tmp}/logs
  restart_backoff_initial: 0.2
  stop_grace_seconds: 2
  swap: {{policy: {policy}, min_residency: {min_residency}, max_defer: 20}}
pools:
{pools}
"""


@pytest.fixture
def device_dir(tmp_path: Path) -> Iterator[Path]:
    d = tmp_path / "devices"
    d.mkdir()
    os.environ["SIM_DEVICE_DIR"] = str(d)
    try:
        yield d
    finally:
        os.environ.pop("SIM_DEVICE_DIR", None)


async def _stream(http: httpx.AsyncClient, model: str, tokens: int = 20) -> str:
    """One streamed completion; returns its finish_reason (raises on any HTTP error)."""
    body = {"model": model, "messages": [{"role": "user", "content": "x"}], "max_tokens": tokens, "stream": True}
    finish = ""
    async with http.stream("POST", "/chat/completions", json=body) as r:
        assert r.status_code == 200, await r.aread()
        async for line in r.aiter_lines():
            if line.startswith("data: {") and '"finish_reason":"' in line.replace(" ", ""):
                finish = line.split('"finish_reason":')[1].split('"')[1]
    return finish


def _rows(gw: GatewayServer) -> dict[str, dict[str, Any]]:
    r = httpx.get(gw.url + "/admin/backends", headers={"Authorization": f"Bearer {ADMIN_KEY}"}, timeout=5)
    return {row["pool"]: row for row in r.json()["data"]}


async def _alternate(gw: GatewayServer) -> list[str]:
    """A burst for a, then (while a serves it) a burst for b, then a again: A-B-A."""
    async with httpx.AsyncClient(
        base_url=gw.base_url, headers={"Authorization": f"Bearer {CLIENT_KEY}"}, timeout=60
    ) as http:
        first = [asyncio.create_task(_stream(http, "a", 40)) for _ in range(4)]
        while _rows(gw)["a"]["state"] != "ready":  # noqa: ASYNC110 - the burst's own start
            await asyncio.sleep(0.02)
        second = [asyncio.create_task(_stream(http, "b")) for _ in range(4)]
        await asyncio.sleep(0.1)
        third = [asyncio.create_task(_stream(http, "a")) for _ in range(4)]
        return list(await asyncio.gather(*first, *second, *third))


def _sim(gw: GatewayServer, pool: str) -> dict[str, Any]:
    port = _rows(gw)[pool]["port"]
    return httpx.get(f"http://127.0.0.1:{port}/sim/state", timeout=5).json()


def test_two_pools_on_one_device_swap_with_sleep_and_nothing_fails_or_aborts(tmp_path: Path, device_dir: Path) -> None:
    with GatewayServer(_cfg(tmp_path, "residency", sleep=1)) as gw:
        finishes = asyncio.run(_alternate(gw))
        assert finishes == ["length"] * 12  # none failed, none aborted
        rows = _rows(gw)
        assert rows["a"]["restarts"] == rows["b"]["restarts"] == 0  # no wake was refused for memory
        sup = gw.state.supervisor
        # a's later burst arrived while a was resident: served before the swap, so one swap
        # (a -> b) serves all twelve requests.
        assert sup.swaps() == {"b": 1}
        assert rows["a"]["state"] == "sleeping" and rows["b"]["state"] == "ready"
        a, b = _sim(gw, "a"), _sim(gw, "b")
        assert a["requests_aborted"] == b["requests_aborted"] == 0
        assert a["requests_succeeded"] == 8 and b["requests_succeeded"] == 4
        assert a["sleep"]["is_sleeping"] and not b["sleep"]["is_sleeping"]
        # The device holds exactly one claim: b's (a's sleep released its memory).
        [claim] = b["devices"]["0"]["claims"]
        assert claim["pid"] == rows["b"]["pid"]


def test_fcfs_swaps_on_every_change_but_still_drains_first(tmp_path: Path, device_dir: Path) -> None:
    with GatewayServer(_cfg(tmp_path, "fcfs", sleep=1)) as gw:
        finishes = asyncio.run(_alternate(gw))
        assert finishes == ["length"] * 12
        # a's second burst waits behind b's: a -> b -> a.
        assert gw.state.supervisor.swaps() == {"b": 1, "a": 1}
        a = _sim(gw, "a")
        assert a["requests_aborted"] == 0 and _rows(gw)["a"]["restarts"] == 0


def test_swap_by_stop_and_start_without_sleep_mode(tmp_path: Path, device_dir: Path) -> None:
    with GatewayServer(_cfg(tmp_path, "fcfs", sleep=0)) as gw:
        finishes = asyncio.run(_alternate(gw))
        assert finishes == ["length"] * 12
        rows = _rows(gw)
        assert gw.state.supervisor.swaps() == {"b": 1, "a": 1}
        assert rows["b"]["state"] == "stopped" and rows["b"]["pid"] is None and rows["a"]["state"] == "ready"
        assert rows["a"]["restarts"] == rows["b"]["restarts"] == 0
