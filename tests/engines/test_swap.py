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


def test_an_engine_whose_start_failed_holds_no_device_and_blocks_no_swap(tmp_path: Path, device_dir: Path) -> None:
    # a's binary is missing. Before, a sat in FAILED counted as holding device 0, so b's
    # requests waited for a swap that never came. Now: a's request gets a 503 at once, b
    # starts on the device, a's next request (after its backoff) swaps b out, fails again
    # fast, and b comes back for its next request. Nothing else fails.
    cfg = _cfg(tmp_path, "residency", sleep=1).replace(
        "  a:\n    engine: sim\n", "  a:\n    engine: sim\n    command: [/nonexistent/bin/engine]\n"
    ).replace("restart_backoff_initial: 0.2", "restart_backoff_initial: 8")  # b starts well inside it
    headers = {"Authorization": f"Bearer {CLIENT_KEY}"}

    async def run() -> None:
        async with httpx.AsyncClient(base_url=gw.base_url, headers=headers, timeout=60) as http:
            body = {"messages": [{"role": "user", "content": "x"}], "max_tokens": 5}
            r = await http.post("/chat/completions", json={**body, "model": "a"})
            assert r.status_code == 503 and r.json()["error"]["code"] == "engine_start_failed", r.text
            assert _rows(gw)["a"]["state"] == "failed"
            assert await _stream(http, "b") == "length"  # a's failure does not hold device 0
            r = await http.post("/chat/completions", json={**body, "model": "a"})  # inside a's backoff
            assert r.status_code == 503 and _rows(gw)["b"]["state"] == "ready"  # b was not swapped out for it
            while (_rows(gw)["a"]["retry_in"] or 0) > 0:  # noqa: ASYNC110 - the backoff's end
                await asyncio.sleep(0.05)
            r = await http.post("/chat/completions", json={**body, "model": "a"})  # swaps b out, fails again
            assert r.status_code == 503 and r.json()["error"]["code"] == "engine_start_failed", r.text
            assert await _stream(http, "b") == "length"

    with GatewayServer(cfg) as gw:
        asyncio.run(run())
        rows = _rows(gw)
        assert rows["b"]["state"] == "ready" and rows["a"]["state"] == "failed"
        assert gw.state.supervisor.swaps() == {"a": 1}  # b left once for a's retry, then came back
        b = _sim(gw, "b")
        assert b["requests_aborted"] == 0 and rows["b"]["restarts"] == 0
        assert [t["op"] for t in b["sleep"]["transitions"]] == ["sleep", "wake_up"]
