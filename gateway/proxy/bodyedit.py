"""Byte-level edits of JSON bodies, for the few fields the gateway must change.

Re-encoding a whole request or response costs far more than a `find` and a slice, and
would reorder or reformat what the client or engine sent; these helpers change one
value and leave every other byte alone, falling back to a re-encode only when a byte
edit could hit the wrong place.
"""

from __future__ import annotations

from typing import Any

import orjson

_MODEL_KEYS = (b'"model":"', b'"model": "')


def replace_model(data: bytes, name: bytes) -> bytes:
    """Put `name` (JSON-escaped, no quotes) in the first `"model"` field of a JSON text.

    Inside JSON strings every quote is escaped, so the unescaped `"model":"` pattern only
    matches a real key; engines emit `model` before `choices`, so the first is top-level.
    """
    for marker in _MODEL_KEYS:
        i = data.find(marker)
        if i >= 0:
            j = i + len(marker)
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


