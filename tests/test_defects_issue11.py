"""Regression tests for the two side-channel defects found in issue #11.

1. The restart counter: the supervisor counted restarts on the engine process, while
   `/metrics` read `Backend.extra["restarts"]`, which nothing wrote (stuck at 0).
2. `spawn_engines=False` lived on the app object, while reload read
   `state.extras["spawn_engines"]`, which nothing wrote: a reload started engines.
"""

from __future__ import annotations

import os
import signal
from pathlib import Path
from typing import Any

import httpx
from prometheus_client.parser import text_string_to_metric_families

from tests.gw import GatewayServer, wait_until


def _cfg(tmp: str, pools: str) -> str:
    return f"""
auth: {{mode: none}}
store: "memory://"
engines:
  port_range: [21000, 21999]
  log_dir: {tmp}/logs
  restart_backoff_initial: 0.2
pools:
{pools}
"""


SIM_POOL = """  m:
    engine: sim
    model: /models/sim
    args: [--ttft-ms, "1", --itl-ms, "1"]
    startup_timeout: 30
"""


def _restarts(gw: GatewayServer) -> dict[str, float]:
    text = httpx.get(gw.url + "/metrics").text
    return {
        s.labels["backend"]: s.value
        for fam in text_string_to_metric_families(text)
        for s in fam.samples
        if s.name == "gateway_backend_restarts_total"
    }


def test_killed_engine_shows_a_restart_in_metrics(tmp_path: Path) -> None:
    with GatewayServer(_cfg(str(tmp_path), SIM_POOL)) as gw:
        assert gw.call(lambda: gw.state.supervisor.wait_ready(30))
        [row] = [r for r in gw.state.supervisor.status() if r["source"] == "spawned"]
        assert _restarts(gw) == {row["id"]: 0.0}
        os.kill(row["pid"], signal.SIGKILL)

        def restarted() -> bool:
            [r] = [r for r in gw.state.supervisor.status() if r["source"] == "spawned"]
            return r["state"] == "ready" and r["restarts"] == 1

        assert wait_until(restarted, 20)
        assert _restarts(gw) == {row["id"]: 1.0}


def test_reload_keeps_spawn_engines_off(tmp_path: Path) -> None:
    path = tmp_path / "gw.yaml"
    path.write_text(_cfg(str(tmp_path), '  m: {endpoints: ["http://127.0.0.1:9/v1"]}\n'))
    with GatewayServer(path.read_text(), spawn_engines=False, config_path=str(path)) as gw:
        assert gw.state.supervisor is None
        path.write_text(_cfg(str(tmp_path), SIM_POOL))
        from gateway.reload import reload

        summary: dict[str, Any] = gw.call(lambda: reload(gw.state))
        assert "pool m" not in summary["added"]
        # Engines stay off: the embedding process asked the gateway not to spawn any.
        assert gw.state.supervisor is None
