"""Token counts for requests that ended without an engine-reported `usage`.

A stream cut short (client gone, engine died, timeout) carries no usage chunk. We count
the prompt from the request body and the completion from exactly what the client
received, with the model's own tokenizer when the pool knows it (`ModelTokenizer`), else
the offline cl100k tokenizer the simulator uses, so the estimate of a cut-short stream
matches the engine (simulated or real) to the token or close to it.

Rules:
- prompt: chat -> `count_chat_prompt(messages, tools)`; completions and embeddings ->
  `count_prompt(prompt|input)`. Counted once per request (as vLLM reports it), not x n.
- completion: per choice index, the concatenated text of every kind that was delivered
  (`delta.content`, `delta.reasoning` / `reasoning_content`, legacy `text`, non-stream
  `message.*`, tool-call name + arguments) is tokenized as a whole. Text is joined before
  tokenizing because engines may split one token's text over two events or merge several.
- a delta carrying the same text in both `reasoning` and `reasoning_content` (gateways
  emit both for clients of every vintage) is counted once.

These run in the meter's flush task (in a worker thread), never on the request path.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

import orjson

from gateway import tokens

# Counts a text's tokens: cl100k (`tokens.count_text`) or a model's own tokenizer.
Count = Callable[[str], int]


def prompt_tokens(endpoint: str, body: dict[str, Any] | None, count: Count = tokens.count_text) -> int:
    if not isinstance(body, dict):
        return 0
    if endpoint == "chat":
        messages = body.get("messages")
        tools = body.get("tools")
        return tokens.count_chat_prompt(
            messages if isinstance(messages, list) else [], tools if isinstance(tools, list) else None, count
        )
    if endpoint == "embeddings":
        return tokens.count_prompt(body.get("input"), count)
    if endpoint == "responses":
        inp = body.get("input")
        if isinstance(inp, list):
            msgs = [m for m in inp if isinstance(m, dict)]
            return tokens.count_chat_prompt(msgs, None, count)
        return tokens.count_prompt(inp, count)
    if endpoint == "messages":
        # Normally unused: a Messages stream reports its input in `message_start`.
        messages = body.get("messages")
        msgs = [m for m in messages if isinstance(m, dict)] if isinstance(messages, list) else []
        system = body.get("system")
        if isinstance(system, str) and system:
            msgs = [{"role": "system", "content": system}, *msgs]
        return tokens.count_chat_prompt(msgs, None, count)
    return tokens.count_prompt(body.get("prompt"), count)


def events(delivered: Iterable[bytes | bytearray]) -> Iterator[dict[str, Any]]:
    """JSON objects in what was delivered: SSE `data:` events, or one whole non-stream body."""
    for chunk in delivered:
        stripped = chunk.strip()
        if not stripped:
            continue
        if stripped[:1] == b"{":  # a non-stream response body
            obj = _loads(stripped)
            if obj is not None:
                yield obj
            continue
        for line in stripped.split(b"\n"):
            line = line.strip()
            if not line.startswith(b"data:"):
                continue  # comments (`:`), `event:`/`id:` fields
            payload = line[5:].strip()
            if payload == b"[DONE]":
                continue
            obj = _loads(payload)
            if obj is not None:
                yield obj


def _loads(raw: bytes) -> dict[str, Any] | None:
    try:
        obj = orjson.loads(raw)
    except orjson.JSONDecodeError:
        return None
    return obj if isinstance(obj, dict) else None


@dataclass
class _Choice:
    text: list[str] = field(default_factory=list)
    reasoning: list[str] = field(default_factory=list)
    # tool-call index -> [name parts, argument parts]
    tools: dict[int, tuple[list[str], list[str]]] = field(default_factory=dict)

    def add_message(self, m: dict[str, Any]) -> None:
        """A `delta` (stream) or `message` (non-stream) object."""
        _add_str(self.text, m.get("content"))
        r, rc = m.get("reasoning"), m.get("reasoning_content")
        if isinstance(r, str) and isinstance(rc, str) and r == rc:
            self.reasoning.append(r)
        else:
            _add_str(self.reasoning, r)
            _add_str(self.reasoning, rc)
        _add_str(self.reasoning, m.get("thinking"))
        calls = m.get("tool_calls")
        if isinstance(calls, list):
            for pos, call in enumerate(calls):
                if isinstance(call, dict):
                    idx = call.get("index", pos)
                    self._add_call(idx if isinstance(idx, int) else pos, call.get("function"))
        if isinstance(m.get("function_call"), dict):  # legacy functions API
            self._add_call(-1, m["function_call"])

    def _add_call(self, idx: int, fn: Any) -> None:
        if not isinstance(fn, dict):
            return
        name, args = self.tools.setdefault(idx, ([], []))
        _add_str(name, fn.get("name"))
        _add_str(args, fn.get("arguments"))

    def count(self, count: Count) -> int:
        n = count("".join(self.text)) + count("".join(self.reasoning))
        for name, args in self.tools.values():
            n += count("".join(name)) + count("".join(args))
        return n


def _add_str(parts: list[str], value: Any) -> None:
    if isinstance(value, str) and value:
        parts.append(value)


def completion_tokens(delivered: Iterable[bytes | bytearray], count: Count = tokens.count_text) -> int:
    return completion(delivered, count=count)[1]


def completion(
    delivered: Iterable[bytes | bytearray], dropped: int = 0, count: Count = tokens.count_text
) -> tuple[bool, int]:
    """(whether any choice reached the client, completion tokens delivered).

    `dropped` events were relayed after the kept ones but not kept (a very long stream):
    they are counted at the kept events' average tokens per event.
    """
    choices: dict[int, _Choice] = {}
    n_events = 0
    for ev in events(delivered):
        raw = ev.get("choices")
        if not isinstance(raw, list):
            text = _typed_delta(ev)
            if text is not None:
                n_events += 1
                choices.setdefault(0, _Choice()).text.append(text)
            continue
        n_events += 1
        for pos, c in enumerate(raw):
            if not isinstance(c, dict):
                continue
            idx = c.get("index", pos)
            ch = choices.setdefault(idx if isinstance(idx, int) else pos, _Choice())
            _add_str(ch.text, c.get("text"))  # legacy completions
            for k in ("delta", "message"):
                if isinstance(c.get(k), dict):
                    ch.add_message(c[k])
    kept = sum(ch.count(count) for ch in choices.values())
    if dropped and n_events:
        kept += round(dropped * kept / n_events)
    return bool(choices), kept


# Responses stream events whose `delta` string is generated output.
_RESPONSES_DELTAS = frozenset(
    {
        "response.output_text.delta",
        "response.reasoning_text.delta",
        "response.reasoning_summary_text.delta",
        "response.function_call_arguments.delta",
    }
)


def _typed_delta(ev: dict[str, Any]) -> str | None:
    """Generated text of a Responses or Anthropic Messages stream event, if it has any."""
    kind = ev.get("type")
    delta = ev.get("delta")
    if kind in _RESPONSES_DELTAS:
        return delta if isinstance(delta, str) else None
    if kind == "content_block_delta" and isinstance(delta, dict):
        for k in ("text", "thinking", "partial_json"):
            v = delta.get(k)
            if isinstance(v, str):
                return v
    return None


def reported_usage(delivered: Iterable[bytes | bytearray]) -> dict[str, Any] | None:
    """The last `usage` object in what was delivered, if the client itself received one."""
    found: dict[str, Any] | None = None
    for ev in events(delivered):
        u = ev.get("usage")
        if isinstance(u, dict) and isinstance(u.get("prompt_tokens"), int):
            found = u
    return found
