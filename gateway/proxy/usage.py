"""Where each route's answers carry token usage, read into one shape for the meter.

A `UsageExtractor` is two pure functions on bytes: one for a whole (non-stream) body and
one for a single relayed SSE event. Both return usage in OpenAI's keys (`prompt_tokens`,
`completion_tokens`, `total_tokens`) whatever the route's own names are, or None when
this body/event carries none. The event function runs on every relayed event, so each
first rejects events with a `startswith`/`find` before any JSON parse, and none of them
re-encodes or changes the event.

    route                   body                       stream
    chat, completions, ...  `usage` (OpenAI)           `data:` chunk with a `usage` object
    /v1/responses           `usage` (input/output)     `event: response.completed` (.response.usage)
    /v1/messages            `usage` (input/output)     `message_start` (input), `message_delta` (final)
    rerank, score           `usage` (prompt_tokens)    -
    tokenize, count_tokens  none: 0 tokens             -
    transcriptions          `usage` {type: duration}   `data:` chunk with a `usage` object (tokens)
                            -> `audio_seconds`
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import orjson

from . import sse

Usage = dict[str, Any]


@dataclass(frozen=True, slots=True)
class UsageExtractor:
    body: Callable[[bytes], Usage | None]
    event: Callable[[bytes], Usage | None]
    name: str = ""
    # A stream's usage is exact only once the stream completed: Messages' `message_start`
    # reports the input alone, so a stream cut after it still has its output estimated.
    partial_until_end: bool = False


def _int(v: Any) -> int:
    return v if isinstance(v, int) and not isinstance(v, bool) else 0


def _tokens(prompt: int, completion: int) -> Usage:
    return {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion}


def _data(event: bytes) -> Any:
    """The JSON of an event's `data:` line (Responses/Messages events have one)."""
    i = event.find(b"data:")
    if i < 0:
        return None
    try:
        return orjson.loads(event[i + 5 :])
    except orjson.JSONDecodeError:
        return None


# --- OpenAI chat / completions / embeddings / transcriptions --------------------------


def _no_event(event: bytes) -> Usage | None:
    del event
    return None


OPENAI = UsageExtractor(sse.body_usage, sse.event_usage, "openai")


# --- Responses ------------------------------------------------------------------------


def responses_usage(u: Any) -> Usage | None:
    """`{input_tokens, output_tokens, total_tokens, input_tokens_details}` -> OpenAI keys."""
    if not isinstance(u, dict):
        return None
    out = _tokens(_int(u.get("input_tokens")), _int(u.get("output_tokens")))
    details = u.get("input_tokens_details")
    if isinstance(details, dict) and _int(details.get("cached_tokens")):
        out["prompt_tokens_details"] = {"cached_tokens": _int(details.get("cached_tokens"))}
    return out


# Terminal events of a Responses stream carry the whole response object, usage included.
RESPONSES_FINAL_EVENTS = (
    b"event: response.completed",
    b"event: response.incomplete",
    b"event: response.failed",
)


def _responses_body(body: bytes) -> Usage | None:
    return responses_usage(sse.body_usage(body))


def _responses_event(event: bytes) -> Usage | None:
    if not event.startswith(RESPONSES_FINAL_EVENTS):
        return None
    obj = _data(event)
    resp = obj.get("response") if isinstance(obj, dict) else None
    return responses_usage(resp.get("usage")) if isinstance(resp, dict) else None


RESPONSES = UsageExtractor(_responses_body, _responses_event, "responses")


# --- Anthropic Messages ----------------------------------------------------------------


def messages_usage(u: Any) -> Usage | None:
    """Anthropic's usage -> OpenAI keys. The prompt is input + cache reads + cache writes
    (Anthropic counts cached prompt tokens outside `input_tokens`)."""
    if not isinstance(u, dict):
        return None
    cached = _int(u.get("cache_read_input_tokens"))
    prompt = _int(u.get("input_tokens")) + cached + _int(u.get("cache_creation_input_tokens"))
    out = _tokens(prompt, _int(u.get("output_tokens")))
    if cached:
        out["prompt_tokens_details"] = {"cached_tokens": cached}
    return out


def _messages_body(body: bytes) -> Usage | None:
    return messages_usage(sse.body_usage(body))


def _messages_event(event: bytes) -> Usage | None:
    if event.startswith(b"event: message_delta"):
        obj = _data(event)
        return messages_usage(obj.get("usage")) if isinstance(obj, dict) else None
    if event.startswith(b"event: message_start"):
        obj = _data(event)
        msg = obj.get("message") if isinstance(obj, dict) else None
        return messages_usage(msg.get("usage")) if isinstance(msg, dict) else None
    return None


MESSAGES = UsageExtractor(_messages_body, _messages_event, "messages", partial_until_end=True)


# --- pooling (rerank, score) and routes without token usage ---------------------------


def _pooling_body(body: bytes) -> Usage | None:
    u = sse.body_usage(body)
    if u is None:
        return None
    return _tokens(_int(u.get("prompt_tokens")), 0)


POOLING = UsageExtractor(_pooling_body, _no_event, "pooling")


def _zero_body(body: bytes) -> Usage | None:
    del body
    return _tokens(0, 0)


# Tokenize, detokenize, count_tokens: the engine runs no model, so they cost 0 tokens
# (and still count as requests).
NO_TOKENS = UsageExtractor(_zero_body, _no_event, "none")


def _transcription_body(body: bytes) -> Usage | None:
    # vLLM: `{"type": "duration", "seconds": N}` (N rounded up): no tokens, the audio's
    # length, which the ledger bills as `audio_seconds`.
    u = sse.body_usage(body)
    if u is not None and isinstance(u.get("prompt_tokens"), int):
        return u
    out = _tokens(0, 0)
    if u is not None and u.get("type") == "duration":
        seconds = u.get("seconds")
        if isinstance(seconds, (int, float)) and not isinstance(seconds, bool) and seconds >= 0:
            out["audio_seconds"] = seconds
    return out


# Streams with `stream_include_usage` end with an OpenAI-shaped token usage chunk.
TRANSCRIPTION = UsageExtractor(_transcription_body, sse.event_usage, "transcription")
