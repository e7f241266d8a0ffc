"""Spawned engines behind the HTTP gateway: crash mid-stream, restart, start-up gating."""

from __future__ import annotations

import os
import signal
import sys
import time
from typing import Any

import httpx
import openai
import pytest

from gateway.cli import main
from tests.engines.util import pid_gone
from tests.gw import ADMIN_KEY, CLIENT_KEY, GatewayServer, auth_yaml, wait_until


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


def test_engine_refusing_the_pools_key_fails_at_once_and_visibly(
    tmp_path: Any, capsys: pytest.CaptureFixture[str]
) -> None:
    """The engine's own `--api-key` (args win over the launcher's) differs from the pool's
    `api_key`: its /v1/models answers 401 to the readiness probe. Not an endless `starting`
    (the start-up timeout is 30 s here, 900 s by default), not a restart loop: FAILED with
    the reason, the process stopped, and requests, queued or new, answered at once with
    the 502 a request meeting the engine's 401 would get."""
    extra = 'api_key: "not-the-engines-key"\n    queue: {timeout: 20}'
    args = '[--api-key, the-engines-key, --startup-seconds, "1", --ttft-ms, "1", --itl-ms, "1"]'
    with GatewayServer(_cfg(str(tmp_path), args, extra)) as gw:
        h = {"authorization": f"Bearer {CLIENT_KEY}"}
        body = {"model": "m", "messages": [{"role": "user", "content": "x"}], "max_tokens": 2}
        t0 = time.monotonic()
        # Sent while the engine loads: it queues, then learns at once that nothing will serve it.
        r = httpx.post(gw.base_url + "/chat/completions", headers=h, json=body, timeout=30)
        assert time.monotonic() - t0 < 10, "answered at the queue timeout, not when the engine failed"
        err = r.json()["error"]
        assert r.status_code == 502 and err["code"] == "upstream_auth_failed", r.text
        assert err["type"] == "server_error" and err["param"] is None
        assert "HTTP 401" in err["message"] and "gateway configuration problem" in err["message"]
        assert "Unauthorized" in err["message"]  # the sim's body, as vLLM's bare string

        [row] = _backend_rows(gw)
        assert row["state"] == "failed" and row["restarts"] == 0
        assert "rejected the gateway's key: /v1/models answered HTTP 401" in row["last_error"]
        assert wait_until(lambda: row["pid"] is None or pid_gone(row["pid"]), 5)  # memory freed

        # New requests do not queue either, stream or not.
        for stream in (False, True):
            t1 = time.monotonic()
            r = httpx.post(gw.base_url + "/chat/completions", headers=h, json={**body, "stream": stream}, timeout=30)
            assert r.status_code == 502 and r.json()["error"]["code"] == "upstream_auth_failed", r.text
            assert time.monotonic() - t1 < 2

        # And the operator sees it in `gateway status` (what /admin/backends says, as a table).
        capsys.readouterr()
        assert main(["status", "--url", gw.url, "--admin-key", ADMIN_KEY]) == 0
        out = capsys.readouterr().out
        assert "failed" in out and "rejected the gateway's key" in out and "0/1 ready" in out
        # No restart happened behind our back meanwhile.
        assert _backend_rows(gw)[0]["restarts"] == 0


def test_engine_killed_while_its_child_holds_stdout_is_seen_dead_at_once(tmp_path: Any) -> None:
    """vLLM's EngineCore outlives a SIGKILLed API server holding the inherited stdout. asyncio's
    `Process.wait()` returns only once every pipe closes, so the supervisor kept the dead
    engine READY for as long as the child lived (seen on real vLLM: seconds). Here the child
    lives 60 s; the exit must be seen within a second or two, and the engine restarted."""
    script = tmp_path / "engine.py"
    script.write_text(
        "import subprocess, sys\n"
        "subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(60)'])  # inherits stdout\n"
        "from gateway.sim.__main__ import main\n"
        "sys.exit(main())\n"
    )
    extra = f"command: [{sys.executable}, {script}]"
    with GatewayServer(_cfg(str(tmp_path), '[--ttft-ms, "1", --itl-ms, "1"]', extra)) as gw:
        assert gw.call(lambda: gw.state.supervisor.wait_ready(30))
        pid = _backend_rows(gw)[0]["pid"]
        os.kill(pid, signal.SIGKILL)
        t0 = time.monotonic()
        assert wait_until(lambda: _backend_rows(gw)[0]["state"] != "ready", 10)
        assert time.monotonic() - t0 < 2, time.monotonic() - t0
        # Restarted (the old group, child included, is killed first) and serving again.
        assert wait_until(lambda: (r := _backend_rows(gw)[0])["state"] == "ready" and r["restarts"] == 1, 30)
        r = httpx.post(gw.base_url + "/chat/completions", headers={"authorization": f"Bearer {CLIENT_KEY}"},
                       json={"model": "m", "messages": [{"role": "user", "content": "x"}], "max_tokens": 2},
                       timeout=20)  # fmt: skip
        assert r.status_code == 200, r.text
