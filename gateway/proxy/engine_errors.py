"""Engine error answers, normalised to OpenAI's error shape whatever the engine sent.

A pure function on bytes; `plan` installs it as every request's error rewrite.
"""

from __future__ import annotations

import re
from typing import Any, NamedTuple

import orjson

from ..errors import error_body

_MAX_MESSAGE = 2000
# vLLM "maximum context length", SGLang "longer than the model's context length",
# llama.cpp "exceeds the available context size" (type exceed_context_size_error).
_CONTEXT_RE = re.compile(r"context[ _](length|size)|exceed_context_size", re.I)


# Said by an engine whose core has died: every request it takes will fail the same way
# until its server exits (vLLM's EngineDeadError; the server shuts itself down after).
_ENGINE_DEAD = (b"EngineCore encountered an issue",)


def engine_dead(status: int, body: bytes) -> bool:
    """This error answer means the backend, not the request, is broken: try another one."""
    return status == 500 and any(marker in body for marker in _ENGINE_DEAD)


def _type_for(status: int) -> str:
    # 401/403 never get here: an engine's auth failure is our misconfiguration (a 502).
    if status == 404:
        return "not_found_error"
    if status == 429:
        return "rate_limit_error"
    if status in (408, 504):
        return "timeout_error"
    return "server_error" if status >= 500 else "invalid_request_error"


def _code_for(status: int, message: str, engine_type: str) -> str:
    if status == 404:
        return "model_not_found" if "model" in message.lower() else "not_found"
    if status == 429:
        return "rate_limit_exceeded"
    if status >= 500:
        return "upstream_error"
    if status in (400, 413, 422) and (_CONTEXT_RE.search(message) or _CONTEXT_RE.search(engine_type)):
        return "context_length_exceeded"
    return {405: "method_not_allowed", 408: "timeout", 409: "conflict", 413: "request_too_large"}.get(
        status, "invalid_request"
    )


class _EngineError(NamedTuple):
    message: str | None = None  # None: the body said nothing usable
    param: str | None = None
    code: Any = None  # int (vLLM, SGLang, LMDeploy, llama.cpp), str or None
    type: str = ""


def _parse_error(body: bytes) -> _EngineError:
    """What any engine's error body says, whatever its shape."""
    text = body.decode("utf-8", "replace").strip()
    if not text:
        return _EngineError()
    try:
        obj = orjson.loads(body)
    except orjson.JSONDecodeError:
        # Plain text (proxies, crashed handlers); an HTML page from something in between says nothing.
        return _EngineError(None if text.startswith("<") else text)
    if not isinstance(obj, dict):
        return _EngineError(obj if isinstance(obj, str) else text)
    err = obj.get("error")
    if isinstance(err, dict):
        src = err  # nested: OpenAI, vLLM (integer code), llama.cpp (integer code, no param)
    elif isinstance(err, str) and "message" not in obj:
        return _EngineError(err)  # SGLang's auth middleware `{"error": "Unauthorized"}`, TGI, Ollama
    else:
        src = obj  # flat: older vLLM, SGLang, LMDeploy `{"object": "error", "message", ...}`
    if "message" not in src and "detail" in obj:
        return _fastapi_detail(obj["detail"])
    msg, param, type_ = src.get("message"), src.get("param"), src.get("type")
    return _EngineError(
        msg if isinstance(msg, str) else (None if msg is None else str(msg)),
        param if isinstance(param, str) else None,
        src.get("code"),
        type_ if isinstance(type_, str) else "",
    )


def _fastapi_detail(detail: Any) -> _EngineError:
    # FastAPI: `{"detail": "Not Found"}` or a 422 list of {"loc", "msg", "type"}.
    if isinstance(detail, str):
        return _EngineError(detail)
    parts: list[str] = []
    param = None
    for d in detail if isinstance(detail, list) else []:
        if not isinstance(d, dict):
            continue
        where = d.get("loc")  # engines send null or a bare string here too
        loc = ".".join(str(x) for x in (where if isinstance(where, list) else []) if x != "body")
        param = param or loc or None
        parts.append(f"{loc}: {d.get('msg', '')}" if loc else str(d.get("msg", "")))
    return _EngineError("; ".join(parts) or None, param)


UPSTREAM_AUTH_FAILED = "upstream_auth_failed"


def upstream_auth_message(status: int, body: bytes) -> str:
    """What a client reads when an engine refused the gateway's own key (401/403): the
    same words whether a request met the refusal or the readiness probe did first."""
    said = _parse_error(body).message
    said_part = f" (backend said: {said[:200]})" if said else ""
    return (
        f"The backend rejected the gateway's credentials (HTTP {status}){said_part}. "
        "This is a gateway configuration problem, not a problem with your request."
    )


def normalize_error(status: int, body: bytes, content_type: str | None) -> tuple[int, bytes]:
    """(status, body) for an engine's error answer, in OpenAI's nested shape with a string code.

    The status is kept, except an engine's 401/403: that is our configured upstream key
    being wrong, so the client gets a 502 naming the gateway, not an auth error it
    cannot fix. `content_type` is unused: engines label plain text as JSON and the
    reverse, so the body is sniffed.
    """
    del content_type
    if status in (401, 403):
        return 502, error_body(upstream_auth_message(status, body), "server_error", None, UPSTREAM_AUTH_FAILED)
    e = _parse_error(body)
    message = (e.message or f"The backend answered HTTP {status} without an error message.")[:_MAX_MESSAGE]
    param = e.param
    if 400 <= status < 500 and isinstance(e.code, str) and e.code:
        code = e.code  # already an OpenAI-style identifier
    else:
        code = _code_for(status, message, e.type)
    type_ = _type_for(status)
    if code == "model_not_found":
        type_ = "invalid_request_error"  # what OpenAI sends for an unknown model
        param = param or "model"
    elif code == "context_length_exceeded":
        param = param or "messages"
    return status, error_body(message, type_, param, code)
