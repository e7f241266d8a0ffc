"""Every edit the gateway makes to a request body, and the model-name edit of answers.

The request edits, in the order `plan` applies them: ask a stream for its usage chunk
(`with_include_usage`), drop echoed reasoning (`strip_reasoning_from_request`), ask a
floats-only engine for floats (`force_float_request`), and, per backend at send time,
the model name it serves (`request_for_backend`).

Re-encoding a whole request or response costs far more than a `find` and a slice, and
would reorder or reformat what the client or engine sent; these helpers change one
value and leave every other byte alone, falling back to a re-encode only when a byte
edit could hit the wrong place.
"""

from __future__ import annotations

from typing import Any

import orjson


def replace_model(data: bytes, name: bytes) -> bytes:
    """Put `name` (JSON-escaped, no quotes) in the first `"model"` field of a JSON text.

    Inside JSON strings every quote is escaped, so the unescaped `"model":"` pattern only
    matches a real key; engines emit `model` before `choices`, so the first is top-level.
    """
    # One scan for the key, then the spelling of its colon: two patterns searched in turn
    # meant a scan of the whole event when the first was absent (slow on large events).
    i = data.find(b'"model":')
    while i >= 0:
        j = i + 8
        if data[j : j + 1] == b" ":
            j += 1
        if data[j : j + 1] != b'"':  # `"model": null` or a nested object: look further
            i = data.find(b'"model":', j)
            continue
        j += 1
        end = j + len(name)
        if data.startswith(name, j) and data[end : end + 1] == b'"':
            # Already `name` (the common case: the engine serves the requested name). An
            # escaped name never ends in a lone backslash, so that quote closes the string.
            return data
        k = _string_end(data, j)
        if k < 0 or data[j:k] == name:
            return data
        return data[:j] + name + data[k:]
    return data


def _string_end(data: bytes, start: int) -> int:
    """Index of the quote closing the JSON string whose content starts at `start`, or -1."""
    k = data.find(b'"', start)
    while k >= 0:
        backslashes = 0
        m = k - 1
        while m >= start and data[m] == 0x5C:  # backslash
            backslashes += 1
            m -= 1
        if backslashes % 2 == 0:
            return k
        k = data.find(b'"', k + 1)
    return -1


def request_for_backend(raw: bytes, body: dict[str, Any], served: str) -> bytes:
    """The request body with `model` set to the name the chosen engine serves."""
    if body.get("model") == served:
        return raw
    name = orjson.dumps(served)[1:-1]
    if raw.count(b'"model"') == 1:
        return replace_model(raw, name)
    # Several "model" keys (nested objects): only a re-encode is certain to hit the right one.
    return orjson.dumps({**body, "model": served})


def with_include_usage(raw: bytes, body: dict[str, Any], continuous: bool = False) -> bytes:
    """The request body asking the engine for a usage chunk, changing as few bytes as we can.

    `continuous` also asks for the running total on every chunk (vLLM/SGLang's
    `continuous_usage_stats`), so a stream cut short still has the engine's own figures.
    """
    opts = body.get("stream_options")
    if opts is None:
        stripped = raw.lstrip()
        if stripped.startswith(b"{"):
            rest = stripped[1:].lstrip()
            sep = b"" if rest.startswith(b"}") else b","
            extra = b',"continuous_usage_stats":true' if continuous else b""
            return b'{"stream_options":{"include_usage":true' + extra + b"}" + sep + rest
    new = dict(body)
    asked: dict[str, Any] = {"include_usage": True}
    if continuous:
        asked["continuous_usage_stats"] = True
    new["stream_options"] = {**(opts if isinstance(opts, dict) else {}), **asked}
    return orjson.dumps(new)


def request_wants_base64(body: dict[str, Any]) -> bool:
    return body.get("encoding_format") == "base64"


def force_float_request(raw: bytes, body: dict[str, Any]) -> bytes:
    """The request body asking the engine for floats (for pools with `engine_base64: false`).

    Swaps the one `encoding_format` token in place when it appears exactly once (the
    common case: no re-encode of a large input); otherwise re-encodes. Returns `raw`
    when the body does not ask for base64.
    """
    if not request_wants_base64(body):
        return raw
    for token in (b'"encoding_format":"base64"', b'"encoding_format": "base64"'):
        if raw.count(token) == 1:
            return raw.replace(token, b'"encoding_format":"float"')
    return orjson.dumps({**body, "encoding_format": "float"})


# Clients echo these back on assistant messages (see proxy/reasoning.py for the answers).
REASONING_FIELDS = ("reasoning", "reasoning_content")


def strip_reasoning_from_request(body: dict[str, Any]) -> bool:
    """Drop `reasoning`/`reasoning_content` from assistant messages, in place; True if any went.

    Clients echo earlier answers back with these fields; some engines reject unknown
    message fields with a 400, and no chat template needs them. Call it only when the
    raw body contains `"reasoning` (cheap bytes test first).
    """
    messages = body.get("messages")
    if not isinstance(messages, list):
        return False
    changed = False
    for m in messages:
        if isinstance(m, dict) and m.get("role") == "assistant":
            for f in REASONING_FIELDS:
                if f in m:
                    del m[f]
                    changed = True
    return changed
