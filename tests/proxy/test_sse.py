"""SSE framing and usage detection on the relay path."""

from __future__ import annotations

from gateway.proxy.sse import EventFramer, body_usage, event_usage, is_usage_only


def test_framer_handles_any_split() -> None:
    stream = b'data: {"a":1}\n\ndata: {"b":2}\n\ndata: [DONE]\n\n'
    for cut in range(1, len(stream)):
        f = EventFramer()
        events = f.feed(stream[:cut]) + f.feed(stream[cut:])
        assert b"".join(events) == stream
        assert len(events) == 3


def test_usage_detection_only_parses_usage_events() -> None:
    assert event_usage(b'data: {"choices":[{"delta":{}}],"usage":null}\n\n') is None
    ev = b'data: {"choices":[],"usage":{"prompt_tokens":3,"completion_tokens":4,"total_tokens":7}}\n\n'
    assert event_usage(ev) == {"prompt_tokens": 3, "completion_tokens": 4, "total_tokens": 7}
    assert is_usage_only(ev)
    body = b'{"choices":[{"message":{"content":"\\"usage\\": {x"}}],"usage":{"prompt_tokens":1,"prompt_tokens_details":{"cached_tokens":0}}}'
    assert body_usage(body) == {"prompt_tokens": 1, "prompt_tokens_details": {"cached_tokens": 0}}


def test_event_usage_spaced_and_null() -> None:
    assert event_usage(b'data: {"choices": [], "usage": {"prompt_tokens": 2}}\n\n') == {"prompt_tokens": 2}
    assert event_usage(b'data: {"choices": [{"delta": {}}], "usage": null}\n\n') is None
