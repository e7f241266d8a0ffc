"""vLLM-shaped error bodies: {"error": {"message", "type", "param", "code": <int status>}}."""

from __future__ import annotations

from typing import Any

import orjson

# vLLM names most errors after the HTTP status; these are the ones clients see.
_TYPES = {
    400: "BadRequestError",
    401: "AuthenticationError",
    403: "PermissionDeniedError",
    404: "NotFoundError",
    405: "MethodNotAllowedError",
    408: "RequestTimeoutError",
    409: "ConflictError",
    413: "RequestEntityTooLargeError",
    422: "UnprocessableEntityError",
    429: "RateLimitError",
    500: "InternalServerError",
    501: "NotImplementedError",
    502: "BadGatewayError",
    503: "ServiceUnavailableError",
    504: "GatewayTimeoutError",
}


def error_type(status: int) -> str:
    if status in _TYPES:
        return _TYPES[status]
    return "BadRequestError" if status < 500 else "InternalServerError"


class ApiError(Exception):
    """Raised by validation and handlers; rendered as a vLLM error response."""

    def __init__(self, status: int, message: str, type_: str | None = None, param: str | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.type = type_ or error_type(status)
        self.param = param

    def body(self) -> bytes:
        return error_body(self.status, self.message, self.type, self.param)


def error_body(status: int, message: str, type_: str | None = None, param: str | None = None) -> bytes:
    err: dict[str, Any] = {"message": message, "type": type_ or error_type(status), "param": param,
                           "code": status}
    return orjson.dumps({"error": err})


# vLLM's EngineDeadError, answered as a 500 InternalServerError by its exception handler.
ENGINE_DEAD_MESSAGE = "EngineCore encountered an issue. See stack trace (above) for the root cause."


def engine_dead() -> ApiError:
    return ApiError(500, ENGINE_DEAD_MESSAGE, "InternalServerError")


def bad_request(message: str, param: str | None = None) -> ApiError:
    return ApiError(400, message, "BadRequestError", param)


def validation_error(name: str, kind: str, msg: str, value: Any) -> ApiError:
    """vLLM 0.32's pydantic request-validation 400: type "Bad Request", param "body.<field>"."""
    loc = f"body.{name}"
    detail = {"type": kind, "loc": loc, "msg": msg, "input": value}
    return ApiError(400, f"1 validation error:\n  {detail!r}", "Bad Request", loc)


def not_supported(api: str) -> ApiError:
    """A route the served model has no handler for. vLLM 0.32's routers raise
    NotImplementedError("The model does not support <API>"), which its exception handler
    renders as 501 NotImplementedError (serve/exception_handling/error_response.py)."""
    return ApiError(501, f"The model does not support {api}", "NotImplementedError")


class RouteNotMounted(ApiError):
    """A route vLLM 0.32 does not mount for this model kind (embeddings on a generative
    model, chat/completions on an embedding model): FastAPI's bare 404."""

    def __init__(self) -> None:
        super().__init__(404, "Not Found")

    def body(self) -> bytes:
        return b'{"detail":"Not Found"}'
