"""`server.stream_keepalive`: a streamed request waiting for an engine that starts on demand
gets its headers and SSE comments meanwhile; SDKs and curl still read the answer; errors
after the early 200 arrive as error events; off by default. Simulator engines, real sockets."""

from __future__ import annotations

import json
import subprocess
import threading
import time
from pathlib import Path

import httpx
import openai
import pytest

from tests.gw import CLIENT_KEY, GatewayServer, auth_yaml, wait_until

AUTH = {"Authorization": f"Bearer {CLIENT_KEY}"}


def _cfg(tmp: Path, keepalive: str, pools: dict[str, str], server_extra: str = "") -> str:
    body = "".join(f"""  {name}:
    engine: sim
    model: /models/{name}
    args: [--ttft-ms, "5", --itl-ms, "5", --output-tokens, "8", {args}]
    start: on_demand
    startup_timeout: {timeout}
    queue: {{timeout: 1}}  # a load's wait is the longer of this and startup_timeout
    health: {{interval: 0.2}}
""" for name, (args, timeout) in ((n, v.split("|")) for n, v in pools.items()))
    server = f"server:\n  stream_keepalive: {keepalive}\n{server_extra}" if keepalive else ""
    return auth_yaml() + server + f"""
store: "memory://"
engines:
  port_range: [22000, 22999]
  log_dir: {tmp}/logs
  stop_grace_seconds: 2
pools:
{body}"""


def _stream(gw: GatewayServer, model: str, content: str = "hi") -> tuple[httpx.Response, list[tuple[float, str]]]:
    """A raw streamed chat: the response and its lines with the seconds they arrived at."""
    t0 = time.monotonic()
    lines: list[tuple[float, str]] = []
    body = {"model": model, "stream": True, "messages": [{"role": "user", "content": content}]}
    with httpx.stream("POST", gw.base_url + "/chat/completions", json=body, headers=AUTH, timeout=60) as r:
        for line in r.iter_lines():
            if line:
                lines.append((time.monotonic() - t0, line))
    return r, lines


def test_keepalive_while_loading_then_the_answer_streams_to_httpx_sdk_and_curl(tmp_path: Path) -> None:
    slow = '--startup-seconds, "1.5"|30'
    with GatewayServer(_cfg(tmp_path, "0.2", {"raw": slow, "sdk": slow, "curl": slow})) as gw:
        r, lines = _stream(gw, "raw")
        assert r.status_code == 200 and r.headers["content-type"].startswith("text/event-stream")
        comments = [t for t, line in lines if line.startswith(":")]
        first_data = next(t for t, line in lines if line.startswith("data:"))
        # Comments every 0.2 s during a load of at least 1.5 s, all before the answer.
        assert len(comments) >= 5 and max(comments) < first_data
        assert [line for _, line in lines if line.startswith("data:")][-1] == "data: [DONE]"

        # The OpenAI SDK skips the comments: the answer reads as usual.
        c = openai.OpenAI(base_url=gw.base_url, api_key=CLIENT_KEY, max_retries=0, timeout=60)
        chunks = list(c.chat.completions.create(model="sdk", stream=True, messages=[{"role": "user", "content": "hi"}]))
        text = "".join(ch.choices[0].delta.content or "" for ch in chunks if ch.choices)
        assert text and chunks[-1].choices[0].finish_reason is not None

        # curl shows the comments as they are and exits 0.
        out = subprocess.run(
            ["curl", "-sS", "-N", "--max-time", "60", "-H", f"Authorization: Bearer {CLIENT_KEY}",
             "-H", "Content-Type: application/json", gw.base_url + "/chat/completions",
             "-d", json.dumps({"model": "curl", "stream": True, "messages": [{"role": "user", "content": "hi"}]})],
            capture_output=True, text=True, timeout=90, check=True).stdout
        assert out.startswith(": waiting for the model") and out.rstrip().endswith("data: [DONE]")


def test_a_load_that_times_out_ends_the_stream_with_an_error_event(tmp_path: Path) -> None:
    with GatewayServer(_cfg(tmp_path, "0.2", {"never": '--startup-seconds, "60"|1.5'})) as gw:
        r, lines = _stream(gw, "never")
        assert r.status_code == 200  # committed by the keep-alive
        data = [line for _, line in lines if line.startswith("data:")]
        assert data[-1] == "data: [DONE]" and len(data) == 2
        err = json.loads(data[0].removeprefix("data: "))["error"]
        # The start fails outright (#16's fast fail): the reason, in the stream's error event.
        # (Stream error events carry the dialect's one code, `upstream_error`; the reason is in the message.)
        assert err["type"] == "server_error", err
        assert "failed to start" in err["message"] and "not ready after 1.5s" in err["message"], err
        assert any(line.startswith(":") for _, line in lines)

        c = openai.OpenAI(base_url=gw.base_url, api_key=CLIENT_KEY, max_retries=0, timeout=60)
        with pytest.raises(openai.APIError, match="failed to start"):
            list(c.chat.completions.create(model="never", stream=True, messages=[{"role": "user", "content": "hi"}]))


def test_an_engine_error_after_the_early_200_carries_the_engines_message(tmp_path: Path) -> None:
    pools = {"short": '--startup-seconds, "1", --max-model-len, "16"|30'}
    with GatewayServer(_cfg(tmp_path, "0.2", pools)) as gw:
        r, lines = _stream(gw, "short", content="word " * 100)
        assert r.status_code == 200
        data = [line for _, line in lines if line.startswith("data:")]
        assert data[-1] == "data: [DONE]"
        err = json.loads(data[0].removeprefix("data: "))["error"]
        assert "maximum context length is 16 tokens" in err["message"]


def test_without_the_setting_or_without_stream_nothing_is_sent_early(tmp_path: Path) -> None:
    slow = '--startup-seconds, "1"|30'
    with GatewayServer(_cfg(tmp_path, "", {"quiet": slow})) as gw:
        r, lines = _stream(gw, "quiet")
        assert r.status_code == 200 and lines and not any(line.startswith(":") for _, line in lines)
    with GatewayServer(_cfg(tmp_path, "0.2", {"plain": slow})) as gw:
        body = {"model": "plain", "messages": [{"role": "user", "content": "hi"}]}
        r = httpx.post(gw.base_url + "/chat/completions", json=body, headers=AUTH, timeout=60)
        assert r.status_code == 200 and r.json()["choices"][0]["message"]["content"]


def test_a_client_leaving_during_the_keepalive_leaves_the_queue(tmp_path: Path) -> None:
    with GatewayServer(_cfg(tmp_path, "0.2", {"a": '--startup-seconds, "2"|30'})) as gw:
        pool = gw.state.resolve("a")
        body = {"model": "a", "stream": True, "messages": [{"role": "user", "content": "hi"}]}
        seen = threading.Event()

        def leave_after_first_comment() -> None:
            with httpx.stream("POST", gw.base_url + "/chat/completions", json=body, headers=AUTH, timeout=30) as r:
                for line in r.iter_lines():
                    if line.startswith(":"):
                        seen.set()
                        return  # closes the connection mid-wait

        t = threading.Thread(target=leave_after_first_comment)
        t.start()
        t.join(30)
        assert seen.is_set()
        assert wait_until(lambda: pool.queued == 0 and pool.outstanding == 0, timeout=10)
        # The load went on; the next request is served by the engine it started, and is the
        # only one that engine ever saw (the first left the queue, it was not forwarded later).
        r, lines = _stream(gw, "a")
        assert r.status_code == 200 and lines[-1][1] == "data: [DONE]"
        assert wait_until(lambda: pool.outstanding == 0, timeout=5)
        [backend] = pool.backends
        sim = httpx.get(backend.url.removesuffix("/v1") + "/sim/state", timeout=5).json()
        assert sim["requests_total"] == 1


def test_a_shutdown_during_the_keepalive_ends_the_stream_with_shutting_down(tmp_path: Path) -> None:
    cfg = _cfg(tmp_path, "0.2", {"a": '--startup-seconds, "60"|120'}, server_extra="  drain_seconds: 0.5\n")
    gw = GatewayServer(cfg).start()
    try:
        body = {"model": "a", "stream": True, "messages": [{"role": "user", "content": "hi"}]}
        lines: list[str] = []
        with httpx.stream("POST", gw.base_url + "/chat/completions", json=body, headers=AUTH, timeout=30) as r:
            for line in r.iter_lines():
                lines.append(line)
                if line.startswith(":") and len(lines) == 1:
                    threading.Thread(target=gw.stop).start()  # drains 0.5 s, then cuts us short
        assert r.status_code == 200
        data = [line for line in lines if line.startswith("data:")]
        assert data[-1] == "data: [DONE]"
        assert json.loads(data[0].removeprefix("data: "))["error"]["code"] == "shutting_down"
    finally:
        gw.stop()
