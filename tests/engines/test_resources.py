"""Unit tests of the pieces engines are built from: devices, ports, logs, probes, reload plans."""

from __future__ import annotations

import asyncio
import socket
from pathlib import Path
from types import SimpleNamespace

import pytest

from gateway import config as config_mod
from gateway.engines import diff
from gateway.engines.gpus import GpuInventory, GpusExhausted
from gateway.engines.health import ProbeCounter, parse_gauges
from gateway.engines.logs import EngineLog, log_file_name
from gateway.engines.ports import PortAllocator, PortsExhausted, port_is_free
from gateway.routing.backend import BackendState

# --- devices ---


def test_device_sets_are_disjoint_and_in_inventory_order() -> None:
    inv = GpuInventory(["0", "1", "2", "3", "4"])
    a = inv.allocate(2, "a")
    b = inv.allocate(2, "b")
    assert (a, b) == (("0", "1"), ("2", "3"))
    assert inv.allocate(0, "cpu") == ()
    with pytest.raises(GpusExhausted, match="needs 2 devices but only 1 of 5 are free"):
        inv.allocate(2, "c")
    inv.release("a")
    c = inv.allocate(3, "c")
    assert c == ("0", "1", "4") and set(c).isdisjoint(b)


def test_duplicate_inventory_is_rejected() -> None:
    with pytest.raises(ValueError):
        GpuInventory(["0", "0"])


def test_config_check_refuses_more_devices_than_the_inventory() -> None:
    with pytest.raises(
        config_mod.ConfigError, match=r"engines.gpus: pools ask for 6 devices .* inventory has 4"
    ):
        config_mod.loads(
            """
auth: {mode: none}
engines: {gpus: [0, 1, 2, 3]}
pools:
  a: {engine: vllm, model: /m, replicas: 2, gpus_per_replica: 2}
  b: {engine: sglang, model: /m, gpus_per_replica: 2}
"""
        )


# --- ports ---


def _free_window(size: int) -> int:
    # Below the usual ephemeral range and above the engines' default range, so parallel
    # test runs rarely touch it.
    for low in range(31000, 32700, size):
        if all(port_is_free(p) for p in range(low, low + size)):
            return low
    raise AssertionError("no window of free ports")


def test_ports_are_free_distinct_and_skip_taken_ones() -> None:
    busy = _free_window(4)
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", busy))
        taken.listen()
        alloc = PortAllocator(busy, busy + 3)
        got = [alloc.allocate() for _ in range(3)]
        assert busy not in got and len(set(got)) == 3
        assert all(port_is_free(p) for p in got)
        with pytest.raises(PortsExhausted):
            alloc.allocate()
        alloc.release(got[0])
        assert alloc.allocate() == got[0]
        assert alloc.renew(got[0]) == got[0]  # still free: an engine restarts on its old URL


# --- logs ---


def test_ring_buffer_keeps_last_lines_and_progress_bars_collapse(tmp_path: Path) -> None:
    log = EngineLog(tmp_path / "e.log", max_bytes=1024, backups=2, ring=5)

    async def feed() -> None:
        reader = asyncio.StreamReader()
        reader.feed_data(b"".join(f"line {i}\n".encode() for i in range(10)))
        reader.feed_data(b"load  10%\rload  50%\rload 100%\n" + b"no newline at end")
        reader.feed_eof()
        await log.pump(reader)

    asyncio.run(feed())
    assert log.tail(3) == ["line 9", "load 100%", "no newline at end"]
    assert len(log.tail(100)) == 5
    assert (tmp_path / "e.log").read_bytes().startswith(b"line 0\n")


def test_log_file_rotates(tmp_path: Path) -> None:
    log = EngineLog(tmp_path / "e.log", max_bytes=1024, backups=2)

    async def write() -> None:
        for i in range(100):
            await log.note(f"message {i:03d} " + "x" * 40)

    asyncio.run(write())
    files = sorted(p.name for p in tmp_path.iterdir())
    assert files == ["e.log", "e.log.1", "e.log.2"]
    assert all(p.stat().st_size <= 1024 for p in tmp_path.iterdir())
    assert "message 099" in (tmp_path / "e.log").read_text()


def test_log_file_names_are_safe() -> None:
    assert log_file_name("Qwen/Qwen3-8B/vllm-0") == "Qwen_Qwen3-8B_vllm-0.log"


# --- probes and metrics ---


def test_probe_thresholds() -> None:
    c = ProbeCounter(failure_threshold=3, success_threshold=2)
    assert [c.record(False), c.record(False), c.record(True), c.record(False)] == [None, None, None, None]
    assert [c.record(False), c.record(False)] == [None, False]  # three in a row
    assert [c.record(True), c.record(False), c.record(True), c.record(True)] == [None, None, None, True]


def test_gauges_are_summed_over_label_sets() -> None:
    text = """# HELP vllm:num_requests_running Number of requests
# TYPE vllm:num_requests_running gauge
vllm:num_requests_running{engine="0",model_name="m"} 3.0
vllm:num_requests_running{engine="1",model_name="m"} 2.0
vllm:num_requests_waiting{model_name="a b"} 7
sglang:num_queue_reqs 4
vllm:num_requests_running_total 99
"""
    got = parse_gauges(
        text, {"vllm:num_requests_running", "vllm:num_requests_waiting", "sglang:num_queue_reqs"}
    )
    assert got == {
        "vllm:num_requests_running": 5.0,
        "vllm:num_requests_waiting": 7.0,
        "sglang:num_queue_reqs": 4.0,
    }


# --- reload plans ---


def _cfg(pools: str) -> config_mod.GatewayConfig:
    return config_mod.loads("auth: {mode: none}\nengines: {gpus: [0, 1, 2, 3]}\npools:\n" + pools)


def _running(
    cfg: config_mod.GatewayConfig, pool: str, n: int, state: BackendState = BackendState.READY
) -> list:
    key = diff.spec_key(cfg.pools[pool], cfg.pools[pool].spawn[0])
    return [SimpleNamespace(key=key, pool_name=pool, state=state, name=f"{pool}-{i}") for i in range(n)]


def test_plan_scales_replicas_up_and_down() -> None:
    old = _cfg("  a: {engine: sim, model: m, replicas: 2}")
    up = diff.plan(_running(old, "a", 2), _cfg("  a: {engine: sim, model: m, replicas: 3}"))["a"]
    assert len(up.start) == 1 and not up.surplus and not up.replaced
    running = _running(old, "a", 2)
    running[0].state = BackendState.STARTING  # the one not serving yet goes first
    down = diff.plan(running, _cfg("  a: {engine: sim, model: m, replicas: 1}"))["a"]
    assert down.surplus == [running[0]] and not down.start and not down.replaced


def test_plan_replaces_changed_specs_and_removes_dropped_pools() -> None:
    old = _cfg("  a: {engine: sim, model: m, replicas: 2}\n  b: {engine: sim, model: m}")
    running = _running(old, "a", 2) + _running(old, "b", 1)
    plans = diff.plan(running, _cfg("  a: {engine: sim, model: m, replicas: 2, args: [--ttft-ms, '1']}"))
    assert len(plans["a"].start) == 2 and plans["a"].replaced == running[:2]
    assert plans["b"].replaced == running[2:] and not plans["b"].start


def test_pool_settings_that_shape_the_launch_are_part_of_the_key() -> None:
    chat = _cfg("  a: {engine: sim, model: m, api_key: k1}")
    same = _cfg("  a: {engine: sim, model: m, api_key: k1, max_concurrency: 5, replicas: 4}")
    other_key = _cfg("  a: {engine: sim, model: m, api_key: k2}")
    emb = _cfg("  a: {engine: sim, model: m, api_key: k1, kind: embedding}")
    k = lambda c: diff.spec_key(c.pools["a"], c.pools["a"].spawn[0])  # noqa: E731
    assert k(chat) == k(same)
    assert k(chat) != k(other_key) and k(chat) != k(emb)
