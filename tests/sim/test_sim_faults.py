"""Failure injection: error rate, forced status, crashes, stalls, slow start, API key."""

from __future__ import annotations

import http.client
import json
import socket
import time

import httpx
import openai
import pytest
from openai import OpenAI

from gateway.sim.testing import SimProcess, SimStartError, iter_sse

MSGS = [{"role": "user", "content": "fail maybe"}]
CHAT = {"model": "sim-model", "messages": MSGS, "max_tokens": 5}


def test_error_rate_at_runtime_and_cli() -> None:
    with SimProcess(["--ttft-ms", "0", "--itl-ms", "0"]) as sim, \
            OpenAI(base_url=sim.base_url, api_key="x", max_retries=0) as client:
        assert sim.set_faults(error_rate=1.0, error_status=503)["error_rate"] == 1.0
        assert json.loads(sim.request("GET", "/sim/faults")[1])["error_status"] == 503
        with pytest.raises(openai.InternalServerError) as exc:
            client.chat.completions.create(model="sim-model", messages=MSGS)  # type: ignore[arg-type]
        assert exc.value.status_code == 503
        err = exc.value.body
        assert isinstance(err, dict) and err["code"] == 503 and err["type"] == "ServiceUnavailableError"
        assert sim.request("GET", "/v1/models")[0] == 200  # only inference requests fail
        sim.set_faults(error_rate=0.5, error_status=500)
        statuses = [sim.request("POST", "/v1/chat/completions", CHAT)[0] for _ in range(60)]
        assert 10 <= statuses.count(500) <= 50 and statuses.count(200) == 60 - statuses.count(500)
        sim.set_faults(error_rate=0.0)
        assert sim.request("POST", "/v1/chat/completions", CHAT)[0] == 200
        assert sim.request("POST", "/sim/faults", {"error_rate": 2})[0] == 400
        assert sim.request("POST", "/sim/faults", {"bogus": 1})[0] == 400
        assert sim.state()["requests_failed"] >= 11
    with SimProcess(["--fault-error-rate", "1", "--fault-error-status", "429"]) as sim:
        status, raw = sim.request("POST", "/v1/chat/completions", CHAT)
        assert status == 429 and json.loads(raw)["error"]["type"] == "RateLimitError"


def test_engine_dead_answers_as_vllm_without_its_core() -> None:
    with SimProcess(["--ttft-ms", "0", "--itl-ms", "0"]) as sim:
        assert sim.set_faults(engine_dead=True)["engine_dead"] is True
        status, raw = sim.request("POST", "/v1/chat/completions", CHAT)
        err = json.loads(raw)["error"]
        assert status == 500 and err["type"] == "InternalServerError" and err["code"] == 500
        assert err["message"].startswith("EngineCore encountered an issue")
        assert sim.request("POST", "/v1/completions", {"model": "sim-model", "prompt": "x"})[0] == 500
        assert sim.request("GET", "/v1/models")[0] == 200  # only inference requests fail
        assert sim.request("POST", "/sim/faults", {"engine_dead": "yes"})[0] == 400
        sim.set_faults(engine_dead=False)
        assert sim.request("POST", "/v1/chat/completions", CHAT)[0] == 200


def test_forced_status_header(chat_sim: SimProcess) -> None:
    for code in (400, 429, 500, 503):
        status, raw = chat_sim.request("POST", "/v1/chat/completions", CHAT,
                                       headers={"x-sim-force-status": str(code)})
        err = json.loads(raw)["error"]
        assert status == code and err["code"] == code and err["param"] is None
    assert chat_sim.request("POST", "/v1/chat/completions", CHAT)[0] == 200  # only that one request


def test_crash_after_requests() -> None:
    sim = SimProcess(["--ttft-ms", "0", "--itl-ms", "0", "--fault-crash-after-requests", "3"])
    try:
        for _ in range(2):
            assert sim.request("POST", "/v1/chat/completions", CHAT)[0] == 200
        assert sim.alive()
        status, raw = sim.request("POST", "/v1/chat/completions", CHAT)
        assert status == 200 and json.loads(raw)["usage"]["completion_tokens"] == 5  # the 3rd is answered
        assert sim.wait_exit(5) == 1  # ... then the process dies
        with pytest.raises(OSError):
            sim.request("GET", "/health", timeout=1)
    finally:
        sim.close()


def test_crash_mid_stream() -> None:
    sim = SimProcess(["--ttft-ms", "1", "--itl-ms", "2", "--fault-crash-after-tokens", "4"])
    try:
        conn, resp = sim.open_stream("/v1/chat/completions", {**CHAT, "max_tokens": 50, "stream": True})
        events: list[str] = []
        try:
            for ev in iter_sse(resp):
                events.append(ev)
        except (http.client.HTTPException, ConnectionError):
            pass  # an abruptly closed chunked body may surface as IncompleteRead
        finally:
            conn.close()
        assert "[DONE]" not in events
        contents = [json.loads(e)["choices"][0]["delta"].get("content") for e in events]
        assert contents[0] == "" and len([c for c in contents[1:] if c]) == 4  # exactly K tokens, then gone
        assert sim.wait_exit(5) == 1
    finally:
        sim.close()


def test_crash_mid_stream_seen_by_openai_sdk() -> None:
    sim = SimProcess(["--ttft-ms", "1", "--itl-ms", "1", "--fault-crash-after-tokens", "3"])
    try:
        with OpenAI(base_url=sim.base_url, api_key="x", max_retries=0) as client:
            got: list[str] = []
            with pytest.raises((httpx.HTTPError, openai.APIError)):
                for chunk in client.chat.completions.create(model="sim-model", messages=MSGS,  # type: ignore[arg-type]
                                                            max_tokens=50, stream=True):
                    if chunk.choices and chunk.choices[0].delta.content:
                        got.append(chunk.choices[0].delta.content)
            assert len(got) == 3
        assert sim.wait_exit(5) == 1
    finally:
        sim.close()


def test_stall_mid_stream_keeps_connection_and_slot() -> None:
    with SimProcess(["--ttft-ms", "1", "--itl-ms", "1"]) as sim:
        sim.set_faults(stall_after_tokens=3)
        data = json.dumps({**CHAT, "max_tokens": 50, "stream": True}).encode()
        s = socket.create_connection(("127.0.0.1", sim.port), timeout=5)
        try:
            s.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n\r\n%b"
                      % (len(data), data))
            buf = b""
            while buf.count(b'"content":" ') < 3:
                buf += s.recv(65536)
            s.settimeout(0.3)
            with pytest.raises(TimeoutError):
                more = s.recv(65536)  # nothing more comes, but the socket stays open
                buf += more
                assert more, "connection closed instead of stalling"
                s.recv(65536)
            assert buf.count(b'"content":" ') == 3 and b"[DONE]" not in buf
            assert sim.metrics()["vllm:num_requests_running"] == 1
        finally:
            s.close()
        sim.wait_for(lambda m: m["vllm:num_requests_running"] == 0, timeout=2)
        sim.set_faults(stall_after_tokens=None)
        assert sim.stream("/v1/chat/completions", {**CHAT, "stream": True})[-1] == "[DONE]"


def test_slow_start() -> None:
    t0 = time.monotonic()
    with SimProcess(["--startup-seconds", "1.0"], wait_ready=False) as sim:
        assert sim.request("GET", "/health") == (503, b"")
        status, raw = sim.request("GET", "/v1/models")
        assert status == 503 and json.loads(raw)["error"]["code"] == 503
        assert sim.request("GET", "/metrics")[0] == 200  # metrics stay available while loading
        sim.wait_until_ready(5)
        assert time.monotonic() - t0 >= 1.0
        assert sim.request("GET", "/health")[0] == 200
        assert sim.request("POST", "/v1/chat/completions", CHAT)[0] == 200


def test_start_failure_reports_log() -> None:
    with pytest.raises(SimStartError, match="invalid choice"):
        SimProcess(["--reasoning", "bogus"])


def test_api_key() -> None:
    with SimProcess(["--api-key", "sekrit", "--ttft-ms", "0", "--itl-ms", "0"]) as sim:
        assert sim.request("POST", "/v1/chat/completions", CHAT) == (401, b'{"error":"Unauthorized"}')
        assert sim.request("GET", "/v1/models", headers={"Authorization": "Bearer wrong"})[0] == 401
        assert sim.request("GET", "/health")[0] == 200 and sim.request("GET", "/metrics")[0] == 200
        with OpenAI(base_url=sim.base_url, api_key="sekrit", max_retries=0) as client:
            assert client.chat.completions.create(model="sim-model", messages=MSGS).choices  # type: ignore[arg-type]
        with OpenAI(base_url=sim.base_url, api_key="nope", max_retries=0) as client, \
                pytest.raises(openai.AuthenticationError):
            client.models.list()
