"""Server-sent events on the relay path: framing and the usage chunk.

We frame the engine's byte stream into whole events (so a rewrite never sees half an
event) and otherwise leave every byte alone. Only events that need a decision are
looked into, with cheap `bytes` searches before any JSON parse.
"""

from __future__ import annotations

from typing import Any

import orjson

_EMPTY_CHOICES = (b'"choices":[]', b'"choices": []')


class EventFramer:
    """Splits a byte stream into complete SSE events (each returned with its `\\n\\n`).

    Linear in the bytes fed: each chunk is searched once, and an event split across
    chunks is joined once, when it completes (re-joining and re-scanning the pending
    part on every chunk was quadratic: a 64 KiB event in 1.5 KB pieces cost ~20 ms).
    """

    __slots__ = ("_parts", "_cr", "_crlf")

    def __init__(self) -> None:
        self._parts: list[bytes] = []  # the incomplete event so far
        self._cr = False  # a chunk ended in `\r`, held back in case `\n` follows
        # Whether this stream uses CRLF, decided by its first separator (one engine, one
        # convention): LF streams then skip a scan of every chunk for `\r`.
        self._crlf: bool | None = None

    def feed(self, chunk: bytes) -> list[bytes]:
        crlf = self._crlf
        if crlf is None:
            if b"\r" in chunk:
                crlf = self._crlf = True
            elif b"\n\n" in chunk or (self._parts and chunk[:1] == b"\n"):
                crlf = self._crlf = False
        if crlf:
            # Rare (vLLM/SGLang use \n); normalise so one separator rule applies.
            chunk = self._normalise(chunk)
        events: list[bytes] = []
        parts = self._parts
        start = 0
        if parts:
            if chunk[:1] == b"\n" and parts[-1][-1:] == b"\n":
                # The separator straddles the two chunks.
                events.append(b"".join(parts) + b"\n")
                parts.clear()
                start = 1
            else:
                end = chunk.find(b"\n\n")
                if end < 0:
                    if chunk:
                        parts.append(chunk)
                    return events
                parts.append(chunk[: end + 2])
                events.append(b"".join(parts))
                parts.clear()
                start = end + 2
        end = chunk.find(b"\n\n", start)
        while end >= 0:
            events.append(chunk[start : end + 2])
            start = end + 2
            end = chunk.find(b"\n\n", start)
        if start < len(chunk):
            parts.append(chunk[start:] if start else chunk)
        return events

    def _normalise(self, chunk: bytes) -> bytes:
        if self._cr:
            chunk = b"\r" + chunk
            self._cr = False
        if chunk.endswith(b"\r"):
            chunk = chunk[:-1]
            self._cr = True
        return chunk.replace(b"\r\n", b"\n")

    def rest(self) -> bytes:
        """Whatever trails the last complete event (a stream that ended mid-event)."""
        rest = b"".join(self._parts) + (b"\r" if self._cr else b"")
        self._parts.clear()
        self._cr = False
        return rest


def is_done(event: bytes) -> bool:
    return event.startswith(b"data: [DONE]") or event.startswith(b"data:[DONE]")


def event_usage(event: bytes) -> dict[str, Any] | None:
    """The `usage` object carried by an event, if it carries a non-null one."""
    # Runs on every relayed event: one rfind (usage sits at the end of a chunk), no generator.
    i = event.rfind(b'"usage":')
    if i < 0:
        return None
    j = i + 8
    while j < len(event) and event[j] in b" \t":
        j += 1
    if j >= len(event) or event[j] != 0x7B:  # "{": a null usage is the common case
        return None
    try:
        obj = orjson.loads(_data(event))
    except orjson.JSONDecodeError:
        return None
    usage = obj.get("usage") if isinstance(obj, dict) else None
    return usage if isinstance(usage, dict) else None


def without_usage(event: bytes) -> bytes:
    """The event with its `usage` member removed (a content chunk that also carries usage).

    Called only for events `event_usage` found a usage object in; a byte splice, so the
    rest of the chunk reaches the client as the engine wrote it.
    """
    i = event.rfind(b'"usage":')
    j = event.find(b"{", i)
    k = _object_end(event, j) if i >= 0 and j >= 0 else -1
    if k < 0:
        return event
    before = event[:i].rstrip()
    after = event[k + 1 :]
    if before.endswith(b","):
        return before[:-1] + after
    stripped_after = after.lstrip()
    if stripped_after.startswith(b","):
        return before + stripped_after[1:]
    return before + after


def _object_end(data: bytes, start: int) -> int:
    """Index of the `}` closing the object opening at `start` (usage holds no strings), or -1."""
    # Jumps from brace to brace with `find` (C) instead of a Python loop over every byte.
    depth, k = 1, start
    while True:
        close = data.find(b"}", k + 1)
        if close < 0:
            return -1
        opened = data.find(b"{", k + 1, close)
        if opened >= 0:
            depth += 1
            k = opened
            continue
        depth -= 1
        if depth == 0:
            return close
        k = close


def is_usage_only(event: bytes) -> bool:
    """The final `choices: []` chunk that exists only to carry usage."""
    return any(m in event for m in _EMPTY_CHOICES)


def _data(event: bytes) -> bytes:
    payload = event.strip()
    if payload.startswith(b"data:"):
        payload = payload[5:]
    return payload


def body_usage(body: bytes) -> dict[str, Any] | None:
    """`usage` of a non-stream JSON response, parsing only that object (it sits at the end)."""
    i = body.rfind(b'"usage"')
    if i < 0:
        return None
    j = body.find(b"{", i)
    if j < 0 or body[i + 7 : j].strip(b": \t\n") != b"":
        return None
    k = _object_end(body, j)
    if k < 0:
        return None
    try:
        usage = orjson.loads(body[j : k + 1])
    except orjson.JSONDecodeError:
        return None
    return usage if isinstance(usage, dict) else None
