"""Our HTTP/1.1 server over raw sockets: malformed HTTP, read timeouts, limits, pipelining."""

from __future__ import annotations

import json
import socket
import time
from collections.abc import Iterator

import orjson
import pytest

from gateway.sim.testing import SimProcess
from tests.gw import CLIENT_KEY, GatewayServer, auth_yaml

FAST = ["--served-model-name", "m", "--ttft-ms", "1", "--itl-ms", "1"]
SERVER = "server: {header_timeout: 0.5, body_timeout: 0.5, keep_alive_timeout: 1.0, max_header_bytes: 4096}\n"


@pytest.fixture(scope="module")
def gw() -> Iterator[GatewayServer]:
    with SimProcess(FAST) as sim:
        cfg = auth_yaml() + SERVER + f"""
store: "memory://"
pools:
  m: {{endpoints: [{sim.base_url}]}}
"""
        with GatewayServer(cfg) as g:
            yield g


def _connect(gw: GatewayServer) -> socket.socket:
    s = socket.create_connection(("127.0.0.1", gw.port), timeout=10)
    return s


def _read_until_closed(s: socket.socket, limit_s: float = 10.0) -> tuple[bytes, float]:
    """Everything the server sends until it closes; and how long that took."""
    t0 = time.monotonic()
    got = b""
    s.settimeout(limit_s)
    while True:
        try:
            data = s.recv(65536)
        except TimeoutError:
            raise AssertionError(f"the server did not close the connection within {limit_s} s; got {got!r}") from None
        except ConnectionResetError:
            break
        if not data:
            break
        got += data
    return got, time.monotonic() - t0


def _status_and_error(raw: bytes) -> tuple[int, dict[str, object]]:
    head, _, body = raw.partition(b"\r\n\r\n")
    status = int(head.split(b" ", 2)[1])
    return status, orjson.loads(body)["error"]


def _chat(rid: str, close: bool = False) -> bytes:
    body = json.dumps({"model": "m", "messages": [{"role": "user", "content": rid}], "max_tokens": 2}).encode()
    return (
        f"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {CLIENT_KEY}\r\n"
        f"Content-Type: application/json\r\nX-Request-Id: {rid}\r\nContent-Length: {len(body)}\r\n"
        + ("Connection: close\r\n" if close else "") + "\r\n"
    ).encode() + body


MALFORMED = {
    "bad content-length": b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Length: 12abc\r\n\r\n{}",
    "unknown method": b"FROB /v1/chat/completions HTTP/1.1\r\nHost: x\r\n\r\n",
    "bad chunk size": b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n{}\r\n",
    "garbage": b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03 not http at all\r\n\r\n",
}


@pytest.mark.parametrize("case", list(MALFORMED))
def test_malformed_http_gets_an_openai_shaped_400_and_the_connection_closes(gw: GatewayServer, case: str) -> None:
    with _connect(gw) as s:
        s.sendall(MALFORMED[case])
        got, _ = _read_until_closed(s)
    status, err = _status_and_error(got)
    assert status == 400, got
    assert err["type"] == "invalid_request_error" and err["code"] == "bad_http_request" and err["param"] is None
    assert isinstance(err["message"], str) and err["message"]
    assert b"connection: close" in got.lower()


def test_a_known_method_on_an_inference_route_is_a_405_naming_post(gw: GatewayServer) -> None:
    with _connect(gw) as s:
        s.sendall(b"PUT /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
        got, _ = _read_until_closed(s)
    status, err = _status_and_error(got)
    assert status == 405 and err["code"] == "method_not_allowed" and b"allow: POST" in got


def test_slowloris_headers_are_answered_408_and_closed_after_the_header_timeout(gw: GatewayServer) -> None:
    with _connect(gw) as s:
        s.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: appl")
        t0 = time.monotonic()
        got, _ = _read_until_closed(s, 5.0)
        waited = time.monotonic() - t0
    status, err = _status_and_error(got)
    assert status == 408 and err["code"] == "request_timeout"
    assert 0.4 <= waited < 3.0


def test_a_trickle_of_header_bytes_does_not_extend_the_header_timeout(gw: GatewayServer) -> None:
    with _connect(gw) as s:
        s.sendall(b"POST /v1/chat/completions HTTP/1.1\r\n")
        t0 = time.monotonic()
        s.settimeout(0.1)
        closed = False
        for i in range(40):  # one header byte every 0.1 s, for up to 4 s
            try:
                s.sendall(b"X-Slow-%d: 1\r\n" % i)
                if s.recv(65536) == b"":
                    closed = True
                    break
            except TimeoutError:
                continue
            except (BrokenPipeError, ConnectionResetError):
                closed = True
                break
            closed = True  # the 408 arrived
            break
        assert closed and time.monotonic() - t0 < 3.0


def test_a_stalled_body_is_closed_after_the_body_timeout(gw: GatewayServer) -> None:
    with _connect(gw) as s:
        s.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Length: 1000\r\n\r\n{\"model\": \"m\", \"mess")
        got, waited = _read_until_closed(s, 5.0)
    status, err = _status_and_error(got)
    assert status == 408 and err["code"] == "request_timeout" and waited < 3.0


def test_headers_past_the_limit_get_a_431(gw: GatewayServer) -> None:
    with _connect(gw) as s:
        s.sendall(b"GET /health HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * 5000 + b"\r\n\r\n")
        got, _ = _read_until_closed(s)
    status, err = _status_and_error(got)
    assert status == 431 and err["code"] == "bad_http_request"


def test_an_idle_keep_alive_connection_is_closed_after_its_timeout(gw: GatewayServer) -> None:
    with _connect(gw) as s:
        s.sendall(b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n")
        got, waited = _read_until_closed(s, 5.0)
    assert got.startswith(b"HTTP/1.1 200 ") and 0.8 <= waited < 4.0


def test_pipelined_requests_are_answered_in_order_on_one_connection(gw: GatewayServer) -> None:
    ids = [f"pipe-{i}" for i in range(4)]
    with _connect(gw) as s:
        # All four in one segment; the other paths (ASGI bridge) interleave with the pipeline's.
        s.sendall(_chat(ids[0]) + _chat(ids[1]) + b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n" + _chat(ids[2])
                  + _chat(ids[3], close=True))
        got, _ = _read_until_closed(s)
    answers = got.split(b"HTTP/1.1 ")[1:]
    assert len(answers) == 5 and all(a.startswith(b"200 ") for a in answers), got[:500]
    seen = [a.split(b"x-request-id: ", 1)[1].split(b"\r\n", 1)[0].decode() for a in answers if b"x-request-id" in a]
    assert seen == ids
    assert b'"status":"healthy"' in answers[2]


def test_expect_100_continue_is_honoured(gw: GatewayServer) -> None:
    body = _chat("cont", close=True)
    head, _, payload = body.partition(b"\r\n\r\n")
    with _connect(gw) as s:
        s.sendall(head + b"\r\nExpect: 100-continue\r\n\r\n")
        s.settimeout(5)
        assert s.recv(100).startswith(b"HTTP/1.1 100 Continue")
        s.sendall(payload)
        got, _ = _read_until_closed(s)
    assert got.startswith(b"HTTP/1.1 200 ") and b"chat.completion" in got


def test_the_access_log_has_one_line_per_request_when_on(caplog: pytest.LogCaptureFixture) -> None:
    cfg = auth_yaml() + """
server: {access_log: true}
store: "memory://"
pools:
  m: {endpoints: ["http://127.0.0.1:9/v1"]}
"""
    with GatewayServer(cfg) as g, caplog.at_level("INFO", logger="gateway.access"):
        with _connect(g) as s:
            s.sendall(b"GET /health HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            _read_until_closed(s)
        assert any('"GET /health" 200' in r.getMessage() for r in caplog.records if r.name == "gateway.access")
