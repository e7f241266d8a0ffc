"""Embeddings answers: base64 encoding for engines that only speak floats, `dimensions`.

Pure functions; `plan` decides when they apply (pools with `engine_base64: false`, or
without `supports_dimensions`). The request side of the base64 swap is in `bodyedit`.
"""

from __future__ import annotations

import base64
import sys
from array import array
from typing import Any

import orjson

from ..errors import invalid_request


def _b64_float32(vector: list[Any]) -> str:
    arr = array("f", vector)
    if sys.byteorder == "big":  # the wire format is little-endian float32
        arr.byteswap()
    return base64.b64encode(arr.tobytes()).decode("ascii")


def floats_to_base64(body: bytes) -> bytes:
    """An embeddings response with each float `embedding` replaced by base64 little-endian float32.

    What OpenAI (and the SDK's decoder) expect for `encoding_format: base64`. Everything
    else is kept. Returns `body` itself when no embedding is a float list (already base64,
    or not an embeddings response).
    """
    try:
        obj = orjson.loads(body)
    except orjson.JSONDecodeError:
        return body
    data = obj.get("data") if isinstance(obj, dict) else None
    if not isinstance(data, list):
        return body
    changed = False
    for item in data:
        if isinstance(item, dict) and isinstance(item.get("embedding"), list):
            item["embedding"] = _b64_float32(item["embedding"])
            changed = True
    return orjson.dumps(obj) if changed else body


def check_dimensions(body: dict[str, Any], supports: bool) -> None:
    """Reject `dimensions` unless the pool declares the engine honours it (else it is silently ignored)."""
    if body.get("dimensions") is not None and not supports:
        raise invalid_request(
            "This model does not support the `dimensions` parameter; omit it to get the model's full vector.",
            param="dimensions",
            code="unsupported_parameter",
        )
