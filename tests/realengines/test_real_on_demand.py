"""On demand with real engines spawned by the gateway: llama-server and vLLM's CPU build.

Part of the real-engine tier (tests/realengines/conftest.py installs the engines). The
vLLM test starts its own vLLM (2-5 min on 2 busy cores, ~3 GiB beside the tier's own), so
it runs only with REALENGINES_ON_DEMAND_VLLM=1.

What it shows:
- llama-server (no sleep mode): the first request starts it, idle stops it (process gone),
  the next request starts a new one.
- vLLM CPU with `sleep: 1`: the CPU build of vLLM 0.32 refuses `--enable-sleep-mode` at
  start ("Sleep mode is not supported on current platform", from its ModelConfig: only
  CUDA, ROCm and XPU have it). The gateway starts it again without the flag at once, the
  first request is served, idle stops it, and the next request cold-starts it.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest

from tests.engines.util import pid_gone
from tests.gw import ADMIN_KEY, CLIENT_KEY, GatewayServer, auth_yaml, wait_until

from .harness import RealEngines

VLLM_ENV = {"VLLM_CPU_KVCACHE_SPACE": "1", "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1",
            "TRANSFORMERS_OFFLINE": "1", "VLLM_NO_USAGE_STATS": "1"}  # fmt: skip


@pytest.fixture
def real(engines: RealEngines) -> dict[str, str]:
    return {"REALENGINES_LLAMA_SERVER": engines.llama_server, "REALENGINES_MODEL_GGUF": engines.model_gguf,
            "REALENGINES_VLLM": engines.vllm, "REALENGINES_MODEL_HF": engines.model_hf}


def _cfg(tmp: Path, pool: str) -> str:
    return auth_yaml() + f"""
store: "memory://"
engines:
  port_range: [24000, 24999]
  log_dir: {tmp}/logs
  stop_grace_seconds: 10
pools:
{pool}
"""


def _row(gw: GatewayServer, pool: str) -> dict[str, Any]:
    r = httpx.get(gw.url + "/admin/backends", headers={"Authorization": f"Bearer {ADMIN_KEY}"}, timeout=10)
    [row] = [x for x in r.json()["data"] if x["pool"] == pool]
    return row


def _chat(gw: GatewayServer, model: str) -> None:
    c = openai.OpenAI(base_url=gw.base_url, api_key=CLIENT_KEY, max_retries=0, timeout=600)
    r = c.chat.completions.create(model=model, messages=[{"role": "user", "content": "hi"}], max_tokens=4)
    assert r.choices[0].finish_reason in ("length", "stop")


def test_llama_server_starts_on_first_request_and_stops_when_idle(real: dict[str, str], tmp_path: Path) -> None:
    pool = f"""  llama:
    engine: llamacpp
    command: [{real["REALENGINES_LLAMA_SERVER"]}]
    model: {real["REALENGINES_MODEL_GGUF"]}
    args: [--threads, "1", --ctx-size, "2048"]
    start: on_demand
    idle_timeout: 2
    startup_timeout: 120
    health: {{interval: 0.5}}
"""
    with GatewayServer(_cfg(tmp_path, pool)) as gw:
        assert _row(gw, "llama")["state"] == "stopped"
        _chat(gw, "llama")
        row = _row(gw, "llama")
        pid = row["pid"]
        assert row["state"] == "ready" and pid
        assert wait_until(lambda: _row(gw, "llama")["state"] == "stopped", timeout=30)
        assert wait_until(lambda: pid_gone(pid), timeout=15)
        _chat(gw, "llama")
        assert _row(gw, "llama")["pid"] not in (None, pid)


@pytest.mark.skipif(os.environ.get("REALENGINES_ON_DEMAND_VLLM") != "1", reason="REALENGINES_ON_DEMAND_VLLM=1: its own vLLM")
def test_vllm_cpu_on_demand_and_what_it_does_with_sleep_mode(real: dict[str, str], tmp_path: Path) -> None:
    env = "{" + ", ".join(f"{k}: '{v}'" for k, v in VLLM_ENV.items()) + "}"
    pool = f"""  tiny:
    engine: vllm
    command: [{real["REALENGINES_VLLM"]}, serve]
    model: {real["REALENGINES_MODEL_HF"]}
    env: {env}
    args: [--enforce-eager, --dtype, float32, --max-model-len, "1024", --max-num-seqs, "4"]
    start: on_demand
    sleep: 1
    idle_timeout: 3
    startup_timeout: 900
    health: {{interval: 1}}
"""
    with GatewayServer(_cfg(tmp_path, pool), ) as gw:
        assert _row(gw, "tiny")["state"] == "stopped"
        _chat(gw, "tiny")
        row = _row(gw, "tiny")
        assert row["state"] == "ready"
        assert wait_until(lambda: _row(gw, "tiny")["state"] in ("sleeping", "stopped"), timeout=120)
        row = _row(gw, "tiny")
        if row["state"] == "sleeping":  # a build that supports it: the next request wakes it
            _chat(gw, "tiny")
            assert _row(gw, "tiny")["last_wake_seconds"] is not None
        else:  # refused at start: runs without the flag, stopped when idle
            assert row["sleep_level"] == 0 and "--enable-sleep-mode" not in row["argv"]
            assert "Sleep mode is not supported on current platform" in (row["last_error"] or "")
            first_load = row["last_load_seconds"]
            _chat(gw, "tiny")
            row = _row(gw, "tiny")
            assert row["state"] == "ready" and row["restarts"] == 1  # the relaunch without the flag
            print(f"vLLM CPU cold starts: {first_load} s, then {row['last_load_seconds']} s")
