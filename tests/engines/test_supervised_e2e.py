"""Spawned engines behind the HTTP gateway: crash mid-stream, restart, start-up gating."""

from __future__ import annotations

import os
import signal
import time
from typing import Any

import httpx
import openai
import pytest

from tests.gw import CLIENT_KEY, GatewayServer, auth_yaml, wait_until


def _cfg(tmp: str, args: str, extra: str = "") -> str:
    return auth_yaml() + f"""
store: "memory://"
engines:
  port_range: [21000, 21999]
  log_dir: {tmp}/logs
  restart_backoff_initial: 0.2
pools:
  m:
    engine: sim
    model: /models/sim
    args: {args}
    startup_timeout: 30
    {extra}
"""


def _backend_rows(gw: GatewayServer) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = gw.state.supervisor.status()
    return [r for r in rows if r.get("source") == "spawned"]


def test_engine_killed_mid_stream_ends_the_stream_with_an_error_then_recovers(tmp_path: Any) -> None:
    with GatewayServer(_cfg(str(tmp_path), '[--ttft-ms, "5", --itl-ms, "20"]')) as gw:
        assert gw.call(lambda: gw.state.supervisor.wait_ready(30))
        pid = _backend_rows(gw)[0]["pid"]
        c = openai.OpenAI(base_url=gw.base_url, api_key=CLIENT_KEY, max_retries=0, timeout=10)
        got = 0
        t0 = time.monotonic()
        with pytest.raises(openai.APIError) as e:
            for chunk in c.chat.completions.create(model="m", messages=[{"role": "user", "content": "x"}],
                                                   max_tokens=500, stream=True):
                if chunk.choices and chunk.choices[0].delta.content:
                    got += 1
                    if got == 5:
                        os.kill(pid, signal.SIGKILL)
        assert time.monotonic() - t0 < 5  # an error event, not a hang until some timeout
        assert "mid-stream" in str(e.value.message)
        assert wait_until(lambda: gw.state.pools["m"].outstanding == 0, 2)

        # The supervisor restarts it and it serves again.
        assert wait_until(lambda: (r := _backend_rows(gw)[0])["state"] == "ready" and r["restarts"] == 1, 20)
        assert _backend_rows(gw)[0]["pid"] != pid
        r = c.chat.completions.create(model="m", messages=[{"role": "user", "content": "x"}], max_tokens=3)
        assert r.choices[0].message.content
        c.close()


def test_models_listed_at_once_and_requests_wait_for_a_loading_engine(tmp_path: Any) -> None:
    with GatewayServer(_cfg(str(tmp_path), '[--startup-seconds, "2", --ttft-ms, "1", --itl-ms, "1"]',
                            "queue: {timeout: 20}")) as gw:
        h = {"authorization": f"Bearer {CLIENT_KEY}"}
        t0 = time.monotonic()
        r = httpx.get(gw.base_url + "/models", headers=h)
        assert r.status_code == 200 and [m["id"] for m in r.json()["data"]] == ["m"]
        assert time.monotonic() - t0 < 1  # Open WebUI gives up on /models after 10 s
        assert _backend_rows(gw)[0]["state"] == "starting"
        # A request while the engine loads queues in the gateway, then succeeds.
        r = httpx.post(gw.base_url + "/chat/completions", headers=h, timeout=20,
                       json={"model": "m", "messages": [{"role": "user", "content": "x"}], "max_tokens": 2})
        assert r.status_code == 200, r.text
        assert time.monotonic() - t0 >= 1.5
        assert _backend_rows(gw)[0]["state"] == "ready"
        card = httpx.get(gw.base_url + "/models/m", headers=h).json()
        assert card["max_model_len"] == 4096 and card["root"] == "/models/sim"


def test_no_ready_engine_answers_503_with_retry_after(tmp_path: Any) -> None:
    with GatewayServer(_cfg(str(tmp_path), '[--startup-seconds, "30"]', "queue: {timeout: 0.5}")) as gw:
        r = httpx.post(gw.base_url + "/chat/completions", headers={"authorization": f"Bearer {CLIENT_KEY}"},
                       json={"model": "m", "messages": [{"role": "user", "content": "x"}]}, timeout=10)
        assert r.status_code == 503
        assert r.headers["retry-after"] == "5"
        assert "no ready backend" in r.json()["error"]["message"]
