"""The CLI's HTTP layer (httpx), mocked with respx: headers, bodies, error handling."""

from __future__ import annotations

import json

import httpx
import pytest
import respx

from gateway.cli import main

URL = "http://gw.test"
ARGS = ["--url", URL, "--admin-key", "sk-admin"]


@respx.mock
def test_status_sends_the_admin_key_and_prints_a_table(capsys: pytest.CaptureFixture[str]) -> None:
    route = respx.get(f"{URL}/admin/backends").mock(return_value=httpx.Response(200, json={
        "object": "list", "ready": 1, "total": 1,
        "data": [{"pool": "p", "id": "p/sim-0", "engine": "sim", "state": "ready", "pid": 42, "port": 20001,
                  "devices": "0,1", "outstanding": 3, "restarts": 1, "uptime": 12.3, "last_error": None}],
    }))
    assert main(["status", *ARGS]) == 0
    req = route.calls.last.request
    assert req.headers["authorization"] == "Bearer sk-admin"
    out = capsys.readouterr().out
    assert "p/sim-0" in out and "0,1" in out and "1/1 ready" in out


@respx.mock
def test_status_shows_on_demand_states_and_load_times(capsys: pytest.CaptureFixture[str]) -> None:
    respx.get(f"{URL}/admin/backends").mock(return_value=httpx.Response(200, json={
        "object": "list", "ready": 0, "total": 1,
        "data": [{"pool": "p", "id": "p/vllm-0", "engine": "vllm", "state": "sleeping", "pid": 42, "port": 20001,
                  "devices": "0", "outstanding": 0, "restarts": 0, "uptime": None, "last_error": None,
                  "start": "on_demand", "last_load_seconds": 71.2, "last_wake_seconds": 2.04}],
    }))
    assert main(["status", *ARGS]) == 0
    header, row = capsys.readouterr().out.splitlines()[:2]
    assert "START" in header and "LOAD" in header
    assert "on_demand" in row and "sleeping" in row and "start 71.2s, wake 2.0s" in row


@respx.mock
def test_logs_path_keeps_slashes_of_backend_ids(capsys: pytest.CaptureFixture[str]) -> None:
    route = respx.get(f"{URL}/admin/backends/p/sim-0/logs").mock(
        return_value=httpx.Response(200, json={"lines": ["loading", "ready"]}))
    assert main(["status", "--logs", "p/sim-0", "--lines", "5", *ARGS]) == 0
    assert route.calls.last.request.url.params["lines"] == "5"
    assert capsys.readouterr().out.splitlines() == ["loading", "ready"]


@respx.mock
def test_keys_create_posts_the_limits_and_prints_the_secret_once(capsys: pytest.CaptureFixture[str]) -> None:
    route = respx.post(f"{URL}/admin/keys").mock(
        return_value=httpx.Response(200, json={"name": "alice", "key": "sk-gw-secret"}))
    assert main(["keys", "create", "--name", "alice", "--models", "qwen*, llama*", "--rpm", "600",
                 "--budget", "5000000/month", *ARGS]) == 0
    body = json.loads(route.calls.last.request.content)
    assert body == {"name": "alice", "models": ["qwen*", "llama*"], "rpm": 600, "budget": "5000000/month"}
    assert capsys.readouterr().out.strip() == "sk-gw-secret"


@respx.mock
def test_api_errors_print_the_openai_message_and_exit_1(capsys: pytest.CaptureFixture[str]) -> None:
    respx.post(f"{URL}/admin/reload").mock(return_value=httpx.Response(
        400, json={"error": {"message": "pools.x.replicas: must be >= 1", "type": "invalid_request_error",
                             "param": None, "code": "invalid_config"}}))
    with pytest.raises(SystemExit) as e:
        main(["reload", *ARGS])
    assert e.value.code == 1
    assert "pools.x.replicas: must be >= 1" in capsys.readouterr().err


@respx.mock
def test_unreachable_gateway_is_a_clear_error(capsys: pytest.CaptureFixture[str]) -> None:
    respx.get(f"{URL}/admin/backends").mock(side_effect=httpx.ConnectError("refused"))
    with pytest.raises(SystemExit) as e:
        main(["status", *ARGS])
    assert e.value.code == 1 and "cannot reach http://gw.test" in capsys.readouterr().err
