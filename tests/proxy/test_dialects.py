"""Stream dialects: terminal events and the error event each SDK raises on."""

from __future__ import annotations

import orjson

from gateway.errors import GatewayError, anthropic_body
from gateway.proxy import dialects


def _data(ev: bytes) -> dict:
    head, _, data = ev.partition(b"\ndata: ")
    assert head == b"event: error" and ev.endswith(b"\n\n")
    return orjson.loads(data)


def test_terminal_events() -> None:
    assert dialects.RESPONSES.ends is not None and dialects.MESSAGES.ends is not None
    assert dialects.RESPONSES.ends(b'event: response.completed\ndata: {}\n\n')
    assert dialects.RESPONSES.ends(b'event: response.incomplete\ndata: {}\n\n')
    assert not dialects.RESPONSES.ends(b'event: response.output_text.delta\ndata: {}\n\n')
    assert dialects.MESSAGES.ends(b'event: message_stop\ndata: {"type":"message_stop"}\n\n')
    assert not dialects.MESSAGES.ends(b'event: message_delta\ndata: {}\n\n')
    assert dialects.OPENAI.ends is None and dialects.OPENAI.inject_usage
    assert not dialects.RESPONSES.inject_usage and not dialects.MESSAGES.inject_usage


def test_error_events() -> None:
    last = b'event: response.output_text.delta\ndata: {"type":"x","sequence_number":41}\n\n'
    assert _data(dialects.RESPONSES.error_event("boom", last)) == {
        "type": "error", "code": "upstream_error", "message": "boom", "param": None, "sequence_number": 42,
    }  # fmt: skip
    assert _data(dialects.RESPONSES.error_event("boom", None))["sequence_number"] == 0
    assert _data(dialects.MESSAGES.error_event("boom", last)) == {
        "type": "error", "error": {"type": "api_error", "message": "boom"}
    }
    openai_ev = dialects.OPENAI.error_event("boom", None)
    assert openai_ev.startswith(b"data: {\"error\"") and openai_ev.endswith(b"data: [DONE]\n\n")


def test_anthropic_error_bodies() -> None:
    for status, kind in [(400, "invalid_request_error"), (401, "authentication_error"), (404, "not_found_error"),
                         (413, "request_too_large"), (429, "rate_limit_error"), (500, "api_error"),
                         (502, "api_error"), (503, "overloaded_error"), (501, "api_error")]:
        body = orjson.loads(anthropic_body(GatewayError(status, "msg", "code")))
        assert body == {"type": "error", "error": {"type": kind, "message": "msg"}}
    # An engine's error, already normalised to OpenAI's shape: its message is kept.
    engine = GatewayError(404, "backend answered 404", "upstream_error",
                          raw_body=b'{"error":{"message":"The model `x` does not exist.","type":"x","param":null}}')
    assert orjson.loads(anthropic_body(engine))["error"] == {"type": "not_found_error",
                                                             "message": "The model `x` does not exist."}
