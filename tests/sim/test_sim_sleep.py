"""Sleep mode endpoints and the device-memory ledger, over real sim processes."""

from __future__ import annotations

import json
import os
import signal
import threading
from pathlib import Path
from typing import Any

import pytest

from gateway.sim.testing import SimProcess, SimStartError

DEV = {"VLLM_SERVER_DEV_MODE": "1"}
FAST = ["--served-model-name", "m", "--ttft-ms", "0", "--itl-ms", "0"]
CHAT = {"model": "m", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 4}


def _sleeping(sim: SimProcess) -> bool:
    status, body = sim.request("GET", "/is_sleeping")
    assert status == 200
    return bool(json.loads(body)["is_sleeping"])


def test_sleep_wake_round_trip_and_state_metric() -> None:
    with SimProcess([*FAST, "--enable-sleep-mode"], env=DEV) as sim:
        assert _sleeping(sim) is False
        assert sim.request("POST", "/sleep?level=1") == (200, b"")
        assert _sleeping(sim) is True
        assert sim.request("GET", "/health")[0] == 200  # health stays up while asleep
        m = sim.metrics()
        assert m['vllm:engine_sleep_state{engine="0",model_name="m",sleep_state="weights_offloaded"}'] == 1.0
        assert m['vllm:engine_sleep_state{engine="0",model_name="m",sleep_state="awake"}'] == 0.0
        assert sim.request("POST", "/sleep?level=1")[0] == 200  # already asleep: a no-op, as vLLM
        # Partial wake: asleep until every part is back.
        assert sim.request("POST", "/wake_up?tags=weights")[0] == 200
        assert _sleeping(sim) is True
        assert sim.request("POST", "/wake_up?tags=kv_cache")[0] == 200
        assert _sleeping(sim) is False
        assert sim.request("POST", "/sleep?level=2")[0] == 200
        assert sim.metrics()['vllm:engine_sleep_state{engine="0",model_name="m",sleep_state="discard_all"}'] == 1.0
        assert sim.request("POST", "/wake_up")[0] == 200
        assert sim.request("POST", "/wake_up")[0] == 200  # awake already: no-op
        assert sim.request("POST", "/v1/chat/completions", CHAT)[0] == 200


@pytest.mark.parametrize("path,expected", [("/sleep?level=3", 400), ("/sleep?level=x", 400),
                                           ("/sleep?mode=keep", 400), ("/wake_up?tags=gpu", 400)])
def test_bad_sleep_arguments_get_openai_shaped_errors(path: str, expected: int) -> None:
    with SimProcess([*FAST, "--enable-sleep-mode"], env=DEV) as sim:
        status, body = sim.request("POST", path)
        assert status == expected
        err = json.loads(body)["error"]
        assert set(err) >= {"message", "type", "param", "code"} and err["code"] == expected


def test_requests_while_asleep_wait_for_the_wake_up() -> None:
    with SimProcess([*FAST, "--enable-sleep-mode"], env=DEV) as sim:
        assert sim.request("POST", "/sleep")[0] == 200
        result: list[tuple[int, bytes]] = []
        t = threading.Thread(target=lambda: result.append(sim.request("POST", "/v1/chat/completions", CHAT)))
        t.start()
        sim.wait_for(lambda m: m["vllm:num_requests_waiting"] == 1, timeout=5)
        assert not result  # held, not refused
        assert sim.request("POST", "/wake_up")[0] == 200
        t.join(5)
        assert result and result[0][0] == 200


def test_sleep_aborts_in_flight_requests_by_default() -> None:
    with SimProcess(["--served-model-name", "m", "--ttft-ms", "0", "--itl-ms", "50", "--enable-sleep-mode"],
                    env=DEV) as sim:
        result: list[tuple[int, bytes]] = []
        body = {**CHAT, "max_tokens": 200}
        t = threading.Thread(target=lambda: result.append(sim.request("POST", "/v1/chat/completions", body)))
        t.start()
        sim.wait_for(lambda m: m["vllm:num_requests_running"] == 1, timeout=5)
        assert sim.request("POST", "/sleep?level=1")[0] == 200
        t.join(5)
        status, raw = result[0]
        resp = json.loads(raw)
        assert status == 200 and resp["choices"][0]["finish_reason"] == "abort"
        assert resp["usage"]["completion_tokens"] < 200
        assert sim.metrics()['vllm:request_success_total{engine="0",model_name="m",finished_reason="abort"}'] == 1


def test_wake_is_faster_than_cold_start_by_default() -> None:
    args = [*FAST, "--enable-sleep-mode", "--startup-seconds", "1.0"]
    with SimProcess(args, env=DEV) as sim:
        sleep_state = sim.state()["sleep"]
        assert sleep_state["wake_seconds"] == pytest.approx(0.1)
        assert sleep_state["wake_seconds_level2"] == pytest.approx(0.5)
        assert sim.request("POST", "/sleep")[0] == 200
        assert sim.request("POST", "/wake_up")[0] == 200
        took = sim.state()["sleep"]["transitions"][-1]
        assert took["op"] == "wake_up" and took["seconds"] < sleep_state["startup_seconds"]


def test_sleep_endpoints_404_without_dev_mode() -> None:
    with SimProcess([*FAST, "--enable-sleep-mode"], env={"VLLM_SERVER_DEV_MODE": "0"}) as sim:
        for method, path in (("POST", "/sleep"), ("POST", "/wake_up"), ("GET", "/is_sleeping")):
            assert sim.request(method, path) == (404, b'{"detail":"Not Found"}')


def test_sleep_without_enable_sleep_mode_fails() -> None:
    with SimProcess(FAST, env=DEV) as sim:
        assert sim.request("POST", "/sleep")[0] == 500
        assert _sleeping(sim) is False


# ---- device ledger ------------------------------------------------------------------------
def _device_args(tmp: Path) -> list[str]:
    return [*FAST, "--enable-sleep-mode", "--device-dir", str(tmp), "--device-memory-gb", "80",
            "--gpu-memory-utilization", "0.6", "--model-memory-gb", "20"]


def _env(devices: str) -> dict[str, str]:
    return {**DEV, "CUDA_VISIBLE_DEVICES": devices}


def test_two_sims_cannot_share_a_device_until_the_first_sleeps(tmp_path: Path) -> None:
    with SimProcess(_device_args(tmp_path), env=_env("0")) as first:
        with pytest.raises(SimStartError, match="less than desired GPU memory utilization"):
            SimProcess(_device_args(tmp_path), env=_env("0"))
        with SimProcess(_device_args(tmp_path), env=_env("1")) as other_device:  # another GPU is free
            assert other_device.state()["devices"]["1"]["claims"][0]["pid"] == other_device.pid
        assert first.request("POST", "/sleep")[0] == 200
        assert first.state()["devices"]["0"]["claims"] == []
        with SimProcess(_device_args(tmp_path), env=_env("0")) as second:
            # Now the first cannot wake: 500, and it stays asleep.
            status, body = first.request("POST", "/wake_up")
            assert status == 500 and b"CUDA out of memory" in body
            assert _sleeping(first) is True
            assert second.request("POST", "/sleep")[0] == 200
            assert first.request("POST", "/wake_up")[0] == 200
            assert _sleeping(first) is False
            claims = first.state()["devices"]["0"]["claims"]
            assert [c["pid"] for c in claims] == [first.pid]


def test_a_killed_sims_claim_is_ignored(tmp_path: Path) -> None:
    victim = SimProcess(_device_args(tmp_path), env=_env("0"))
    try:
        ledger: dict[str, Any] = json.loads((tmp_path / "gpu0.json").read_text())
        assert [c["pid"] for c in ledger["claims"]] == [victim.pid]
        os.kill(victim.pid, signal.SIGKILL)
        victim.wait_exit(5)
    finally:
        victim.close()
    with SimProcess(_device_args(tmp_path), env=_env("0")) as sim:
        claims = sim.state()["devices"]["0"]["claims"]
        assert [c["pid"] for c in claims] == [sim.pid]


def test_weights_that_do_not_fit_the_utilization_fail_to_start(tmp_path: Path) -> None:
    args = [*_device_args(tmp_path), "--model-memory-gb", "60"]  # 60 GiB of weights > 0.6 x 80
    with pytest.raises(SimStartError, match="No available memory for the cache blocks"):
        SimProcess(args, env=_env("0"))


def test_level_2_wake_needs_reload_weights_or_it_serves_discarded_weights() -> None:
    # vLLM's documented level-2 sequence: wake the weights' memory, reload them in place
    # (collective_rpc reload_weights), wake the KV cache. A plain wake_up skips the reload:
    # vLLM then serves from memory holding no model (the sim counts such requests).
    args = [*FAST, "--enable-sleep-mode", "--startup-seconds", "1.0"]
    with SimProcess(args, env=DEV) as sim:
        assert sim.request("POST", "/sleep?level=2")[0] == 200
        assert sim.state()["sleep"]["weights_valid"] is False
        assert sim.request("POST", "/wake_up")[0] == 200
        assert _sleeping(sim) is False
        assert sim.request("POST", "/v1/chat/completions", CHAT)[0] == 200
        assert sim.state()["sleep"]["served_without_weights"] == 1

        assert sim.request("POST", "/sleep?level=2")[0] == 200
        status, body = sim.request("POST", "/collective_rpc", {"method": "reload_weights"})
        assert status == 500 and b"wake_up?tags=weights first" in body  # nothing to load into yet
        assert sim.request("POST", "/wake_up?tags=weights")[0] == 200
        assert sim.request("POST", "/collective_rpc", {"method": "reload_weights"}) == (200, b'{"results":[null]}')
        assert _sleeping(sim) is True  # the KV cache is still asleep
        assert sim.request("POST", "/wake_up?tags=kv_cache")[0] == 200
        assert _sleeping(sim) is False
        assert sim.request("POST", "/v1/chat/completions", CHAT)[0] == 200
        state = sim.state()["sleep"]
        assert state["weights_valid"] is True and state["served_without_weights"] == 1
        ops = [(t["op"], t["seconds"]) for t in state["transitions"][-3:]]
        assert [op for op, _ in ops] == ["wake_up", "reload_weights", "wake_up"]
        assert ops[1][1] > ops[0][1] + ops[2][1]  # the reload from disk is what a level-2 wake costs


@pytest.mark.parametrize("body,status,detail", [(b"{", 400, b"JSON decode error"), ([1], 400, b"JSON object"),
                                                ({}, 400, b"Missing 'method'"), ({"method": "nope"}, 500, b"nope")])
def test_collective_rpc_bad_bodies(body: Any, status: int, detail: bytes) -> None:
    with SimProcess([*FAST, "--enable-sleep-mode"], env=DEV) as sim:
        got, raw = sim.request("POST", "/collective_rpc", body)
        assert got == status and detail in raw
