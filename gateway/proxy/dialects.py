"""Stream dialects: how a route's event stream ends, and how the gateway ends it on failure.

OpenAI's chat/completions/transcription streams are `data:` chunks closed by `data: [DONE]`;
the gateway can ask for a usage chunk (`stream_options.include_usage`) and hide it. The
Responses and Anthropic Messages streams are typed `event: <type>\\ndata: <json>` pairs that
end with a terminal event and never `[DONE]`; their usage always comes in-band. When an
engine fails after the first byte, each dialect gets the error event its SDKs raise on:

- OpenAI: `data: {"error": {...}}` then `data: [DONE]`;
- Responses: `event: error` with `{"type": "error", "code", "message", "param",
  "sequence_number"}` (OpenAI's ResponseErrorEvent; numbered after the last relayed event);
- Anthropic: `event: error` with `{"type": "error", "error": {"type": "api_error", "message"}}`.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass

import orjson

from ..errors import sse_error_event
from .usage import RESPONSES_FINAL_EVENTS


@dataclass(frozen=True, slots=True)
class StreamDialect:
    name: str
    # The event that ends a complete stream (relayed like any other); None: `data: [DONE]`.
    ends: Callable[[bytes], bool] | None
    # The event closing a stream the engine broke: (message, last relayed event or None).
    error_event: Callable[[str, bytes | None], bytes]
    # Whether the gateway may add `stream_options.include_usage` (and strip the usage chunk).
    inject_usage: bool


def _openai_error(message: str, last: bytes | None) -> bytes:
    del last
    return sse_error_event(message)


OPENAI = StreamDialect("openai", None, _openai_error, inject_usage=True)
# Transcription streams end with [DONE] too, but their usage chunk is asked for by a form
# field (`stream_include_usage`), which proxy/plan.py adds to the upload, not JSON.
OPENAI_NO_INJECT = StreamDialect("openai", None, _openai_error, inject_usage=False)


_SEQ = re.compile(rb'"sequence_number":\s*(\d+)')


def _responses_ends(event: bytes) -> bool:
    return event.startswith(RESPONSES_FINAL_EVENTS)


def _responses_error(message: str, last: bytes | None) -> bytes:
    m = _SEQ.search(last) if last else None
    seq = int(m.group(1)) + 1 if m else 0
    data = {
        "type": "error",
        "code": "upstream_error",
        "message": message,
        "param": None,
        "sequence_number": seq,
    }
    return b"event: error\ndata: " + orjson.dumps(data) + b"\n\n"


RESPONSES = StreamDialect("responses", _responses_ends, _responses_error, inject_usage=False)


def _messages_ends(event: bytes) -> bool:
    return event.startswith(b"event: message_stop")


def _messages_error(message: str, last: bytes | None) -> bytes:
    del last
    data = {"type": "error", "error": {"type": "api_error", "message": message}}
    return b"event: error\ndata: " + orjson.dumps(data) + b"\n\n"


MESSAGES = StreamDialect("anthropic", _messages_ends, _messages_error, inject_usage=False)
