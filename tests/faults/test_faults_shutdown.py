"""SIGTERM while streams outlast `drain_seconds` (issue #14, finding 3).

Before: uvicorn cancelled the remaining tasks after its graceful timeout, so the streams
ended with a truncated chunked body (no error event, no `data: [DONE]`) and the process
exited with -15. Now: each cut stream ends with an OpenAI-shaped error event and
`data: [DONE]`, a request with no answer yet gets a 503, every one is in the usage
ledger, and the exit status is 0.
"""

from __future__ import annotations

import json
import signal
import sqlite3
import threading
from pathlib import Path

import httpx

from gateway.sim.testing import SimProcess
from tests.gw import CLIENT_KEY, auth_yaml, wait_until
from tests.metering.procs import GatewayProcess

STREAMS = 6
# 300 tokens at 20 ms: ~6 s per answer, far past the 1 s drain period.
SIM = ["--served-model-name", "m", "--ttft-ms", "1", "--itl-ms", "20", "--output-tokens", "300"]


def test_sigterm_ends_streams_that_outlast_the_drain_with_an_error_event_and_done(tmp_path: Path) -> None:
    with SimProcess(SIM) as sim:
        cfg = auth_yaml() + f"""
server: {{drain_seconds: 1}}
metering: {{flush_interval: 0.05}}
pools:
  m: {{endpoints: [{sim.base_url}]}}
"""  # default store: sqlite:///var/usage.db in the gateway's working directory
        gw = GatewayProcess(cfg, tmp_path).start()
        try:
            started = threading.Semaphore(0)
            results: dict[str, tuple[int, list[str], BaseException | None]] = {}

            def stream(rid: str) -> None:
                events: list[str] = []
                status, error = 0, None
                try:
                    with httpx.stream("POST", gw.url + "/v1/chat/completions", timeout=30,
                                      headers={"authorization": f"Bearer {CLIENT_KEY}", "x-request-id": rid},
                                      json={"model": "m", "messages": [{"role": "user", "content": rid}],
                                            "stream": True}) as r:
                        status = r.status_code
                        for line in r.iter_lines():
                            if line.startswith("data: "):
                                if not events:
                                    started.release()
                                events.append(line[6:])
                except BaseException as e:  # a truncated chunked body raises here
                    error = e
                results[rid] = (status, events, error)

            def whole(rid: str) -> None:
                r = httpx.post(gw.url + "/v1/chat/completions", timeout=30,
                               headers={"authorization": f"Bearer {CLIENT_KEY}", "x-request-id": rid},
                               json={"model": "m", "messages": [{"role": "user", "content": rid}]})
                results[rid] = (r.status_code, [r.text], None)

            ids = [f"cut-{i}" for i in range(STREAMS)]
            threads = [threading.Thread(target=stream, args=(rid,)) for rid in ids]
            threads.append(threading.Thread(target=whole, args=("cut-whole",)))
            for t in threads:
                t.start()
            for _ in ids:
                assert started.acquire(timeout=20)
            # The non-stream request too must be in flight (at the engine) before SIGTERM:
            # its thread once connected only after the listener had closed.
            assert wait_until(lambda: sim.metrics().get("vllm:num_requests_running", 0) >= STREAMS + 1, 20), (
                sim.metrics())
            gw.signal(signal.SIGTERM)
            assert gw.wait(30) == 0, gw.log_tail()
            for t in threads:
                t.join(30)
        finally:
            gw.stop()

        for rid in ids:
            status, events, error = results[rid]
            assert status == 200 and error is None, (rid, error)
            assert events[-1] == "[DONE]", (rid, events[-3:])
            err = json.loads(events[-2])["error"]
            assert err["code"] == "shutting_down" and err["type"] == "server_error" and err["message"]
            assert 1 < len(events) < 300  # cut part-way, as intended
        status, [text], _ = results["cut-whole"]
        assert status == 503 and json.loads(text)["error"]["code"] == "shutting_down"

        db = sqlite3.connect(tmp_path / "var" / "usage.db")
        rows = {r[0]: r[1:] for r in db.execute("SELECT request_id, status, error, completion_tokens FROM usage")}
        db.close()
        for rid in ids:
            status, error, completion = rows[rid]
            assert status == 200 and "shutting down" in error and completion > 0
        assert rows["cut-whole"][0] == 503
        assert wait_until(lambda: sim.metrics().get("vllm:num_requests_running", 1) == 0, 5)


def test_sigterm_ends_an_anthropic_stream_with_its_own_error_event(tmp_path: Path) -> None:
    with SimProcess(SIM) as sim:
        cfg = auth_yaml() + f"""
server: {{drain_seconds: 0.5}}
store: "memory://"
pools:
  m: {{endpoints: [{sim.base_url}]}}
"""
        gw = GatewayProcess(cfg, tmp_path).start()
        lines: list[str] = []
        error: BaseException | None = None
        started = threading.Event()

        def stream() -> None:
            nonlocal error
            try:
                with httpx.stream("POST", gw.url + "/v1/messages", timeout=30,
                                  headers={"x-api-key": CLIENT_KEY, "anthropic-version": "2023-06-01"},
                                  json={"model": "m", "max_tokens": 300, "stream": True,
                                        "messages": [{"role": "user", "content": "hi"}]}) as r:
                    for line in r.iter_lines():
                        if line.startswith("event: content_block_delta"):
                            started.set()
                        if line:
                            lines.append(line)
            except BaseException as e:
                error = e

        try:
            t = threading.Thread(target=stream)
            t.start()
            assert started.wait(20)
            gw.signal(signal.SIGTERM)
            assert gw.wait(30) == 0, gw.log_tail()
            t.join(30)
        finally:
            gw.stop()
        assert error is None, error
        # Anthropic's shape, not OpenAI's [DONE]: the SDK raises its own APIError on it.
        assert lines[-2] == "event: error", lines[-4:]
        err = json.loads(lines[-1][len("data: "):])
        assert err["type"] == "error" and err["error"]["type"] == "api_error" and "shutting down" in err["error"]["message"]
        assert not any(line == "event: message_stop" for line in lines)
