"""Request-body validation errors the way vLLM's FastAPI layer reports them.

For the routes added after chat/completions (responses, messages, rerank, score, tokenize,
transcriptions) a body that fails pydantic validation never reaches the handler: vLLM's
`validation_exception_handler` (vllm/entrypoints/serve/exception_handling/handlers/
validation.py) answers 400 with the OpenAI error shape, `type` = "Bad Request" (the HTTP
phrase), `param` = the dotted location ("body.max_tokens"), and a message
"N validation error(s):\\n  {...}". That holds on /v1/messages too: only errors returned by
the handler are translated to Anthropic's shape, pydantic errors are not.
"""

from __future__ import annotations

from typing import Any

import orjson

from gateway.sim.errors import ApiError


class BodyError(ApiError):
    """A pydantic-level 400 (always OpenAI-shaped, whatever the route)."""

    def __init__(self, field: str, kind: str, msg: str, param: str | None = None) -> None:
        """`param` overrides the location: vLLM reports a VLLMValidationError's own parameter."""
        loc = "body" if not field else f"body.{field}"
        text = f"1 validation error:\n  {{'type': '{kind}', 'loc': '{loc}', 'msg': '{msg}'}}"
        super().__init__(400, text, "Bad Request", loc if param is None else param)


def load_body(raw: bytes) -> dict[str, Any]:
    try:
        data = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise BodyError("", "json_invalid", f"JSON decode error: {exc}") from None
    if not isinstance(data, dict):
        raise BodyError("", "model_attributes_type", "Input should be a valid dictionary or object")
    return data


def req_str(body: dict[str, Any], name: str, *, allow_empty: bool = True) -> str:
    v = body.get(name)
    if v is None:
        raise BodyError(name, "missing", "Field required")
    if not isinstance(v, str):
        raise BodyError(name, "string_type", "Input should be a valid string")
    if not allow_empty and not v:
        raise BodyError(name, "value_error", f"Value error, {name} must not be empty")
    return v


def opt_str(body: dict[str, Any], name: str) -> str | None:
    v = body.get(name)
    if v is not None and not isinstance(v, str):
        raise BodyError(name, "string_type", "Input should be a valid string")
    return v


def opt_int(body: dict[str, Any], name: str, minimum: int | None = None) -> int | None:
    v = body.get(name)
    if v is None:
        return None
    if isinstance(v, bool) or not isinstance(v, int):
        raise BodyError(name, "int_type", "Input should be a valid integer")
    if minimum is not None and v < minimum:
        raise BodyError(name, "greater_than_equal", f"Input should be greater than or equal to {minimum}")
    return v


def opt_bool(body: dict[str, Any], name: str, default: bool = False) -> bool:
    v = body.get(name)
    if v is None:
        return default
    if not isinstance(v, bool):
        raise BodyError(name, "bool_type", "Input should be a valid boolean")
    return v


def opt_number(body: dict[str, Any], name: str) -> float | None:
    v = body.get(name)
    if v is None:
        return None
    if isinstance(v, bool) or not isinstance(v, int | float):
        raise BodyError(name, "float_type", "Input should be a valid number")
    return float(v)


def opt_str_list(body: dict[str, Any], name: str) -> list[str] | None:
    v = body.get(name)
    if v is None:
        return None
    if not isinstance(v, list) or not all(isinstance(s, str) for s in v):
        raise BodyError(name, "list_type", "Input should be a valid list of strings")
    return v
