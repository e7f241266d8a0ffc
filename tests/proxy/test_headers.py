"""Header rules between client and engine, both ways."""

from __future__ import annotations

from gateway.proxy.headers import request_headers, response_headers


def test_request_headers_replace_key_and_drop_hop_by_hop() -> None:
    client = [
        (b"authorization", b"Bearer client-secret"),
        (b"connection", b"keep-alive"),
        (b"transfer-encoding", b"chunked"),
        (b"content-length", b"10"),
        (b"accept-encoding", b"gzip, deflate, br"),
        (b"host", b"gw"),
        (b"x-openwebui-user-id", b"u1"),
    ]
    h = request_headers(client, "req-1", "upstream-key")
    assert h["authorization"] == "Bearer upstream-key"
    assert h["accept-encoding"] == "identity"
    assert h["x-request-id"] == "req-1"
    assert h["x-openwebui-user-id"] == "u1"
    for dropped in ("connection", "transfer-encoding", "content-length", "host"):
        assert dropped not in h
    assert "authorization" not in request_headers(client, "r", None)


def test_anthropic_client_key_never_reaches_the_engine_and_uploads_keep_their_type() -> None:
    client = [(b"x-api-key", b"client-secret"), (b"anthropic-version", b"2023-06-01")]
    h = request_headers(client, "r", "upstream-key")
    assert "x-api-key" not in h and h["authorization"] == "Bearer upstream-key"
    assert h["anthropic-version"] == "2023-06-01" and h["content-type"] == "application/json"
    ctype = "multipart/form-data; boundary=x"
    assert request_headers(client, "r", None, ctype)["content-type"] == ctype


def test_response_headers_drop_framing() -> None:
    out = dict(response_headers({"Content-Encoding": "gzip", "Transfer-Encoding": "chunked", "X-Engine": "v"}))
    assert out == {b"x-engine": b"v"}
