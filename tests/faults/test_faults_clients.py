"""Clients that misbehave on purpose (issue #13): one that never reads a stream must not
keep its engine slot past the write timeout, and the pool must go on serving others."""

from __future__ import annotations

import json
import socket
import time

import httpx
import pytest

from gateway.sim.testing import SimProcess
from tests.faults.endless_engine import EndlessEngine
from tests.gw import CLIENT_KEY, GatewayServer, auth_yaml, wait_until

WRITE_TIMEOUT = 1.0


def _never_reading_stream(port: int) -> socket.socket:
    """Ask for a stream with a tiny receive buffer, and never read it."""
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    s.connect(("127.0.0.1", port))
    body = json.dumps({"model": "m", "messages": [{"role": "user", "content": "hi"}], "stream": True}).encode()
    s.sendall(
        f"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {CLIENT_KEY}\r\n"
        f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n".encode() + body
    )
    return s


def test_a_never_reading_client_releases_its_slot_within_the_write_timeout() -> None:
    with EndlessEngine() as engine:
        cfg = auth_yaml() + f"""
server: {{write_timeout: {WRITE_TIMEOUT}}}
store: "memory://"
pools:
  m: {{endpoints: ["{engine.base_url}"], max_concurrency: 1}}
"""
        with GatewayServer(cfg) as gw:
            pool = gw.state.pools["m"]
            deaf = _never_reading_stream(gw.port)
            try:
                # It holds the pool's only slot, and the engine is streaming for it.
                assert wait_until(lambda: pool.outstanding == 1 and engine.streaming == 1, 5)
                t0 = time.monotonic()
                # Another client asks meanwhile: it is served once the stalled one is cut.
                r = httpx.post(gw.base_url + "/chat/completions", headers={"authorization": f"Bearer {CLIENT_KEY}"},
                               json={"model": "m", "messages": [{"role": "user", "content": "hi"}]}, timeout=20)
                waited = time.monotonic() - t0
                assert r.status_code == 200 and r.json()["choices"][0]["message"]["content"] == "ok"
                # The buffers on the way fill within a second or so; then the write timeout cuts it.
                assert waited < WRITE_TIMEOUT + 4.0, waited
                # The engine saw its connection close and stopped the stream (its own gauge).
                assert wait_until(lambda: engine.streaming == 0, 2), engine.streaming
                assert wait_until(lambda: pool.outstanding == 0, 1)  # released just after the last byte
                # The server reset the stalled client's connection.
                deaf.settimeout(5)
                with pytest.raises(ConnectionResetError):
                    while deaf.recv(1 << 20):
                        pass
            finally:
                deaf.close()


def test_a_client_that_reads_slowly_but_steadily_is_not_cut() -> None:
    with SimProcess(["--served-model-name", "m", "--ttft-ms", "1", "--itl-ms", "1"]) as sim:
        cfg = auth_yaml() + f"""
server: {{write_timeout: {WRITE_TIMEOUT}}}
store: "memory://"
pools:
  m: {{endpoints: ["{sim.base_url}"]}}
"""
        with GatewayServer(cfg) as gw:
            events, last = 0, ""
            with httpx.stream("POST", gw.base_url + "/chat/completions",
                              headers={"authorization": f"Bearer {CLIENT_KEY}"},
                              json={"model": "m", "messages": [{"role": "user", "content": "hi"}], "stream": True,
                                    "max_tokens": 30}, timeout=20) as r:
                for line in r.iter_lines():
                    if line.startswith("data: "):
                        events, last = events + 1, line
                        time.sleep(0.05)  # 30 x 50 ms: longer than the write timeout in total
            assert events >= 30 and last == "data: [DONE]"
