"""Usage extractors: each route's usage, read into OpenAI's keys, from bodies and single events."""

from __future__ import annotations

from gateway.proxy import usage


def test_responses_usage_only_from_terminal_events() -> None:
    delta = b'event: response.output_text.delta\ndata: {"type":"response.output_text.delta","delta":"usage"}\n\n'
    assert usage.RESPONSES.event(delta) is None
    done = (b'event: response.completed\ndata: {"type":"response.completed","response":{"model":"m","usage":'
            b'{"input_tokens":5,"input_tokens_details":{"cached_tokens":4},"output_tokens":7,"total_tokens":12}}}\n\n')
    assert usage.RESPONSES.event(done) == {
        "prompt_tokens": 5, "completion_tokens": 7, "total_tokens": 12, "prompt_tokens_details": {"cached_tokens": 4},
    }  # fmt: skip
    body = b'{"id":"resp_1","output":[],"usage":{"input_tokens":3,"output_tokens":2,"total_tokens":5}}'
    assert usage.RESPONSES.body(body) == {"prompt_tokens": 3, "completion_tokens": 2, "total_tokens": 5}


def test_messages_usage_adds_cache_tokens_to_the_prompt() -> None:
    start = (b'event: message_start\ndata: {"type":"message_start","message":{"model":"m","usage":'
             b'{"input_tokens":9,"output_tokens":0}}}\n\n')
    assert usage.MESSAGES.event(start) == {"prompt_tokens": 9, "completion_tokens": 0, "total_tokens": 9}
    delta = (b'event: message_delta\ndata: {"type":"message_delta","delta":{"stop_reason":"end_turn"},"usage":'
             b'{"input_tokens":1,"output_tokens":4,"cache_read_input_tokens":16,"cache_creation_input_tokens":2}}\n\n')
    assert usage.MESSAGES.event(delta) == {
        "prompt_tokens": 19, "completion_tokens": 4, "total_tokens": 23, "prompt_tokens_details": {"cached_tokens": 16},
    }  # fmt: skip
    text = b'event: content_block_delta\ndata: {"type":"content_block_delta","delta":{"text":"\\"usage\\":{"}}\n\n'
    assert usage.MESSAGES.event(text) is None
    assert usage.MESSAGES.partial_until_end and not usage.RESPONSES.partial_until_end
    body = b'{"type":"message","content":[],"usage":{"input_tokens":3,"output_tokens":2}}'
    assert usage.MESSAGES.body(body) == {"prompt_tokens": 3, "completion_tokens": 2, "total_tokens": 5}


def test_pooling_no_tokens_and_transcription() -> None:
    body = b'{"id":"score-1","results":[],"usage":{"prompt_tokens":11,"total_tokens":11}}'
    assert usage.POOLING.body(body) == {"prompt_tokens": 11, "completion_tokens": 0, "total_tokens": 11}
    assert usage.NO_TOKENS.body(b'{"count":2,"tokens":[1,2]}') == {"prompt_tokens": 0, "completion_tokens": 0,
                                                                   "total_tokens": 0}
    # Duration usage has no tokens: 0 tokens, and the seconds for the ledger's audio column.
    assert usage.TRANSCRIPTION.body(b'{"text":"hi","usage":{"type":"duration","seconds":3}}') == {
        "prompt_tokens": 0, "completion_tokens": 0, "total_tokens": 0, "audio_seconds": 3}
    assert usage.TRANSCRIPTION.body(b"plain text answer") == {"prompt_tokens": 0, "completion_tokens": 0,
                                                              "total_tokens": 0}
    for bad in (b'"-1"', b"-1", b"true", b"null"):
        u = usage.TRANSCRIPTION.body(b'{"text":"hi","usage":{"type":"duration","seconds":' + bad + b"}}")
        assert u is not None and "audio_seconds" not in u
