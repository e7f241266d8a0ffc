"""Reasoning text: split `<think>` output into reasoning and content, alias the field names.

Pools set `reasoning: none | passthrough | deepseek_r1 | think_tags`. In the two split
modes the engine runs without a reasoning parser and the gateway does vLLM's job:

- `deepseek_r1`: `<think>A</think>B` and `A</think>B` both give reasoning A, content B
  (R1 chat templates open `<think>` in the prompt, so the model often emits no opening
  tag). No `</think>` at all means everything is reasoning (output cut by max_tokens).
- `think_tags` (Qwen3 with the model emitting both tags): output that does not open with
  `<think>` is all content; `<think>` without a close is all reasoning.

Both modes follow vLLM's `BaseThinkingReasoningParser.extract_reasoning`: only the first
`</think>` splits, nothing is stripped around it (content keeps its leading "\\n\\n"), and
empty content is null. Two deliberate differences, both so that a stream and the same
text sent whole split identically: `<think>` is recognised only at the start of the
output (after optional whitespace, which is dropped with the tag, as vLLM does), never
in the middle; and empty reasoning is null rather than "".

Whatever split the reasoning, the engine or we, clients get it as BOTH `reasoning`
(vLLM >= 0.11) and `reasoning_content` (DeepSeek API, SGLang, LMDeploy, llama.cpp, older
vLLM): clients of every vintage read one or the other.

Byte contract of the event functions: an "event" is one SSE event as the proxy frames it
(`sse.EventFramer`): `data: {json}` followed by its terminator (normally `\\n\\n`). The
terminator is optional; whatever precedes the first `{` and follows the last `}` is kept
byte for byte. Non-JSON events (`data: [DONE]`, comments) come back unchanged.
"""

from __future__ import annotations

from typing import Any

import orjson

SPLIT_MODES = frozenset({"deepseek_r1", "think_tags"})
_OPEN = "<think>"
_CLOSE = "</think>"
_FIELDS = ("reasoning", "reasoning_content")
_ENVELOPE = ("id", "object", "created", "model", "system_fingerprint")
# Cheap pre-parse test: matches both field names (and nothing needs doing without it,
# unless we split). A false positive (the word inside a string) only costs a parse.
_REASONING_MARK = b'"reasoning'

# Per-choice phases of a stream.
_START = 0  # nothing decided yet: held text is whitespace and/or a prefix of `<think>`
_REASONING = 1  # inside reasoning: held text is a prefix of `</think>`
_CONTENT = 2  # past the split (or no split at all): everything passes as content

Piece = tuple[str, str]  # ("reasoning" | "content", text)

# What a delta rewrite did; _HELD: all of its text is held back, the event may be droppable.
_SAME, _CHANGED, _HELD = 0, 1, 2


# --- whole text -------------------------------------------------------------------------


def split_text(text: str | None, mode: str) -> tuple[str | None, str | None]:
    """(reasoning, content) of a complete output; modes other than the split ones return (None, text)."""
    if text is None or mode not in SPLIT_MODES:
        return None, text
    stripped = text.lstrip()
    if stripped.startswith(_OPEN):
        body = stripped[len(_OPEN) :]
    elif mode == "think_tags":
        return None, text
    else:
        body = text
    reasoning, tag, content = body.partition(_CLOSE)
    if not tag:
        return reasoning or None, None
    return reasoning or None, content or None


def _held_close_prefix(text: str) -> int:
    """Length of the longest suffix of `text` that is a proper prefix of `</think>`."""
    if "<" not in text[-(len(_CLOSE) - 1) :]:
        return 0
    for k in range(min(len(_CLOSE) - 1, len(text)), 0, -1):
        if text.endswith(_CLOSE[:k]):
            return k
    return 0


# --- streams -----------------------------------------------------------------------------


class _Choice:
    __slots__ = ("phase", "held")

    def __init__(self) -> None:
        self.phase = _START
        self.held = ""


class StreamSplitter:
    """Splits one streamed response, per choice index; not thread-safe, one per stream.

    `n` is the request's `n` (choices expected): once all of them are past the split the
    event rewrite takes its byte-level fast path. An index beyond `n` still gets split
    if it shows up before that.
    """

    __slots__ = ("mode", "n", "_choices", "_settled", "template")

    def __init__(self, mode: str, n: int = 1) -> None:
        if mode not in SPLIT_MODES:
            raise ValueError(f"not a split mode: {mode!r}")
        self.mode = mode
        self.n = max(1, n)
        self._choices: dict[int, _Choice] = {}
        self._settled = 0
        # The last parsed chunk: its envelope (id, created, model) dresses a chunk for
        # text still held when a stream ends without a finish_reason.
        self.template: dict[str, Any] = {}

    @property
    def settled(self) -> bool:
        """True when every expected choice is past the split: nothing left to split or flush."""
        return self._settled >= self.n

    def _state(self, index: int) -> _Choice:
        st = self._choices.get(index)
        if st is None:
            st = self._choices[index] = _Choice()
        return st

    def _settle(self, st: _Choice) -> None:
        if st.phase != _CONTENT:
            st.phase = _CONTENT
            self._settled += 1

    def feed(self, delta_text: str, index: int = 0) -> list[Piece]:
        """Pieces to emit now for this delta; holds back only a possible tag prefix."""
        st = self._state(index)
        if st.phase == _CONTENT:
            return [("content", delta_text)] if delta_text else []
        text = st.held + delta_text if st.held else delta_text
        st.held = ""
        if st.phase == _START:
            stripped = text.lstrip()
            if stripped.startswith(_OPEN):
                # Whitespace before the tag goes with it, as in vLLM's partition().
                text = stripped[len(_OPEN) :]
                st.phase = _REASONING
            elif _OPEN.startswith(stripped):
                # Only whitespace or `<`, `<thi`, ... so far: cannot tell yet.
                st.held = text
                return []
            elif self.mode == "think_tags":
                self._settle(st)
                return [("content", text)]
            else:
                st.phase = _REASONING
        reasoning, tag, content = text.partition(_CLOSE)
        out: list[Piece] = []
        if tag:
            self._settle(st)
            if reasoning:
                out.append(("reasoning", reasoning))
            if content:
                out.append(("content", content))
            return out
        k = _held_close_prefix(text)
        if k:
            st.held = text[-k:]
            text = text[:-k]
        if text:
            out.append(("reasoning", text))
        return out

    def finish(self, index: int = 0) -> list[Piece]:
        """Flush what is held for a choice that ended: it never became a tag."""
        st = self._state(index)
        held, st.held = st.held, ""
        phase = st.phase
        self._settle(st)
        if not held:
            return []
        # Held at the start: whitespace or a partial `<think>`; without a full open tag
        # deepseek_r1 calls it reasoning and think_tags calls it content.
        kind = "content" if phase == _START and self.mode == "think_tags" else "reasoning"
        return [(kind, held)]

    def engine_splits(self, index: int = 0) -> list[Piece]:
        """The engine sends reasoning fields itself (it has a parser): stop splitting this choice."""
        return self.finish(index)

    def pending(self) -> list[int]:
        """Choice indexes with held text."""
        return [i for i, st in self._choices.items() if st.held]


# --- events and bodies -------------------------------------------------------------------


def rewrite_chat_event(event: bytes, splitter: StreamSplitter | None, mode: str) -> bytes | None:
    """The bytes to relay for one chat SSE event (see the module doc), or None to drop it.

    Returns `event` itself (identity) when nothing changes, checked on bytes before any
    parse. None only when our split consumed all of an event's text (held back) and it
    carries nothing else: never a role, finish_reason, tool_calls, logprobs or usage
    chunk. When a choice's finish_reason arrives its held text is flushed into that event.
    Pass `splitter=None` (or a non-split mode) for aliasing only.
    """
    if mode not in SPLIT_MODES:
        splitter = None
    if _REASONING_MARK not in event and (splitter is None or splitter.settled):
        return event
    start = event.find(b"{")
    end = event.rfind(b"}") + 1
    if start < 0 or end <= start:
        return event
    try:
        obj = orjson.loads(event[start:end])
    except orjson.JSONDecodeError:
        return event
    if not isinstance(obj, dict):
        return event
    choices = obj.get("choices")
    if not isinstance(choices, list) or not choices:
        return event
    if splitter is not None:
        splitter.template = obj  # only its envelope keys are read, by drain_chat_events
    changed = held = False
    for ch in choices:
        if isinstance(ch, dict):
            delta = ch.get("delta")
            if isinstance(delta, dict):
                r = _rewrite_delta(delta, ch, splitter)
                changed = changed or r != _SAME
                held = held or r == _HELD
    if not changed:
        return event
    if held and obj.get("usage") is None and _all_empty(choices):
        return None
    return event[:start] + orjson.dumps(obj) + event[end:]


def _all_empty(choices: list[Any]) -> bool:
    """No choice tells the client anything: no delta value, finish_reason or logprobs."""
    for ch in choices:
        if not isinstance(ch, dict) or ch.get("finish_reason") is not None or ch.get("logprobs") is not None:
            return False
        delta = ch.get("delta")
        if not isinstance(delta, dict):
            return False
        for v in delta.values():
            if v is not None:
                return False
    return True


def _rewrite_delta(delta: dict[str, Any], choice: dict[str, Any], splitter: StreamSplitter | None) -> int:
    """Split and alias one delta in place: _SAME, _CHANGED, or _HELD (its text went into holding)."""
    engine_r = _engine_reasoning(delta)
    if splitter is None:
        if engine_r is not None and engine_r.startswith(_OPEN):
            # vLLM's streaming parser leaks the literal `<think>` when the tag and the next
            # token leave the engine in one step (seen under load); the tag is never reasoning.
            engine_r = engine_r[len(_OPEN) :]
            for f in _FIELDS:
                if isinstance(delta.get(f), str) and delta[f].startswith(_OPEN):
                    delta[f] = delta[f][len(_OPEN) :]
            _alias(delta, engine_r)
            return _CHANGED
        return _alias(delta, engine_r)
    index = choice.get("index", 0)
    if not isinstance(index, int):
        index = 0
    pieces: list[Piece] = splitter.engine_splits(index) if engine_r is not None else []
    content = delta.get("content")
    fed = isinstance(content, str) and content != ""
    if fed:
        pieces += splitter.feed(content, index)
    if choice.get("finish_reason") is not None:
        pieces += splitter.finish(index)
    if not pieces:
        if fed:
            del delta["content"]
            return _HELD
        return _alias(delta, engine_r)
    if len(pieces) == 1:  # the common case, without the joins
        kind, text = pieces[0]
        reasoning, new_content = (text, "") if kind == "reasoning" else ("", text)
    else:
        reasoning = "".join(t for k, t in pieces if k == "reasoning")
        new_content = "".join(t for k, t in pieces if k == "content")
    if engine_r:
        reasoning += engine_r
    changed = False
    if new_content:
        changed = new_content != content
        delta["content"] = new_content
    elif fed:  # all of this delta's text was reasoning
        del delta["content"]
        changed = True
    if reasoning:
        changed = (
            changed or delta.get("reasoning") != reasoning or delta.get("reasoning_content") != reasoning
        )
        delta["reasoning"] = reasoning
        delta["reasoning_content"] = reasoning
    return _CHANGED if changed else _SAME


def _engine_reasoning(msg: dict[str, Any]) -> str | None:
    for f in _FIELDS:
        v = msg.get(f)
        if isinstance(v, str):
            return v
    return None


def _alias(msg: dict[str, Any], text: str | None) -> int:
    """Give `msg` both reasoning fields when it has one: _CHANGED if it lacked one, else _SAME."""
    if text is None:
        return _SAME
    changed = _SAME
    for f in _FIELDS:
        if msg.get(f) is None:
            msg[f] = text
            changed = _CHANGED
    return changed


def drain_chat_events(splitter: StreamSplitter | None) -> bytes:
    """Events (`data: ...\\n\\n` each) for text still held when a stream ends; b"" if none.

    Engines send a finish_reason on every normal end, which flushes; call this before
    relaying `data: [DONE]` for streams that ended without one. The events carry the
    engine's `model`: run them through the same model rename as the other events.
    """
    if splitter is None:
        return b""
    out: list[bytes] = []
    for index in splitter.pending():
        delta: dict[str, Any] = {}
        for kind, text in splitter.finish(index):
            if kind == "reasoning":
                delta["reasoning"] = delta["reasoning_content"] = text
            else:
                delta["content"] = text
        envelope = {k: splitter.template[k] for k in _ENVELOPE if k in splitter.template}
        choice = {"index": index, "delta": delta, "logprobs": None, "finish_reason": None}
        out.append(b"data: " + orjson.dumps({**envelope, "choices": [choice]}) + b"\n\n")
    return b"".join(out)


def rewrite_chat_body(body: bytes, mode: str) -> bytes:
    """A non-stream chat response with reasoning split (split modes) and aliased (all modes).

    Returns `body` itself when nothing changes; a body that is not a JSON object passes
    unchanged.
    """
    split = mode in SPLIT_MODES
    if not split and _REASONING_MARK not in body:
        return body
    try:
        obj = orjson.loads(body)
    except orjson.JSONDecodeError:
        return body
    choices = obj.get("choices") if isinstance(obj, dict) else None
    if not isinstance(choices, list):
        return body
    changed = False
    for ch in choices:
        msg = ch.get("message") if isinstance(ch, dict) else None
        if not isinstance(msg, dict):
            continue
        engine_r = _engine_reasoning(msg)
        if engine_r is not None or not split:
            # The engine has a parser: its split stands.
            changed = _alias(msg, engine_r) != _SAME or changed
            continue
        content = msg.get("content")
        if not isinstance(content, str):
            continue  # null content: a tool-call-only answer
        reasoning, new_content = split_text(content, mode)
        if reasoning is None and (new_content or "") == content:
            continue
        msg["content"] = new_content
        if reasoning is not None:
            msg["reasoning"] = reasoning
            msg["reasoning_content"] = reasoning
        changed = True
    return orjson.dumps(obj) if changed else body
