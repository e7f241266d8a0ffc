"""SSE framing and usage detection on the relay path."""

from __future__ import annotations

import orjson

from gateway.proxy.sse import EventFramer, body_usage, event_usage, is_usage_only, without_usage


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


def test_without_usage_keeps_the_rest_of_a_content_chunk() -> None:
    # llama.cpp's last /v1/completions chunk: text, finish_reason, usage and timings together.
    ev = (
        b'data: {"choices":[{"text":"","index":0,"finish_reason":"length"}],"model":"tiny",'
        b'"usage":{"completion_tokens":5,"prompt_tokens":2,"prompt_tokens_details":{"cached_tokens":1}},'
        b'"timings":{"predicted_n":5}}\n\n'
    )
    out = without_usage(ev)
    assert out.endswith(b"\n\n")
    obj = orjson.loads(out[6:])
    assert "usage" not in obj
    assert obj == {k: v for k, v in orjson.loads(ev[6:]).items() if k != "usage"}
    # usage as the first member, and vLLM's continuous stats at the end of a chunk
    assert orjson.loads(without_usage(b'data: {"usage": {"a": 1}, "choices": []}\n\n')[6:]) == {"choices": []}
    last = b'data: {"choices":[{"delta":{"content":"x"}}],"usage":{"prompt_tokens":3,"completion_tokens":1}}\n\n'
    assert orjson.loads(without_usage(last)[6:]) == {"choices": [{"delta": {"content": "x"}}]}


def test_the_framer_splits_any_chunking_like_the_whole_stream() -> None:
    # Events cut at random places (separators split across chunks included), LF or CRLF
    # streams: the framer returns the events a split of the whole stream gives, and rest().
    import random

    from gateway.proxy.sse import EventFramer

    def whole(stream: bytes) -> tuple[list[bytes], bytes]:
        s, out, start = stream.replace(b"\r\n", b"\n"), [], 0
        while (end := s.find(b"\n\n", start)) >= 0:
            out.append(s[start : end + 2])
            start = end + 2
        return out, s[start:]

    rnd = random.Random(3)
    for _ in range(3000):
        sep = rnd.choice([b"\n\n", b"\r\n\r\n"])
        nl = sep[: len(sep) // 2]
        events = [nl.join(b"data: " + bytes(rnd.choice(b"ab:") for _ in range(rnd.randint(0, 10)))
                          for _ in range(rnd.randint(1, 3))) + sep for _ in range(rnd.randint(0, 8))]
        stream = b"".join(events) + rnd.choice([b"", b"data: tail", b"data: x" + nl])
        cuts = sorted(rnd.sample(range(len(stream) + 1), min(len(stream) + 1, rnd.randint(0, 8))))
        framer, got, prev = EventFramer(), [], 0
        for c in [*cuts, len(stream)]:
            got += framer.feed(stream[prev:c])
            prev = c
        assert (got, framer.rest()) == whole(stream), (stream, cuts)
