"""Errors the gateway itself produces, in OpenAI's shape, mapped to HTTP in one place."""

from __future__ import annotations

import orjson

# status -> OpenAI error `type`
_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "invalid_request_error",
    405: "invalid_request_error",
    408: "timeout_error",
    409: "invalid_request_error",
    413: "invalid_request_error",
    422: "invalid_request_error",
    429: "rate_limit_error",
    500: "server_error",
    502: "server_error",
    503: "server_error",
    504: "timeout_error",
}


class GatewayError(Exception):
    """Raised anywhere on the request path; `app` turns it into the HTTP response."""

    def __init__(
        self,
        status: int,
        message: str,
        code: str,
        param: str | None = None,
        type: str | None = None,
        headers: dict[str, str] | None = None,
        raw_body: bytes | None = None,
    ) -> None:
        super().__init__(message)
        self.raw_body = raw_body  # an engine's (normalised) error body, relayed as is
        self.status = status
        self.message = message
        self.code = code
        self.param = param
        self.type = type or _TYPES.get(status, "server_error" if status >= 500 else "invalid_request_error")
        self.headers = headers or {}

    def body(self) -> bytes:
        if self.raw_body is not None:
            return self.raw_body
        return error_body(self.message, self.type, self.param, self.code)


def error_body(message: str, type: str, param: str | None, code: str | None) -> bytes:
    return orjson.dumps({"error": {"message": message, "type": type, "param": param, "code": code}})


def sse_error_event(message: str, type: str = "server_error", code: str = "upstream_error") -> bytes:
    """The event that ends a stream which failed after its first byte went out."""
    return b"data: " + error_body(message, type, None, code) + b"\n\ndata: [DONE]\n\n"


# Constructors for the common cases, so messages stay consistent.


def invalid_request(message: str, param: str | None = None, code: str = "invalid_request") -> GatewayError:
    return GatewayError(400, message, code, param)


def model_not_found(model: str) -> GatewayError:
    return GatewayError(
        404, f"The model `{model}` does not exist or you do not have access to it.", "model_not_found", "model"
    )


def invalid_api_key(detail: str = "Invalid API key provided.") -> GatewayError:
    return GatewayError(401, detail, "invalid_api_key", headers={"www-authenticate": "Bearer"})


def service_unavailable(message: str, retry_after: int = 1, code: str = "service_unavailable") -> GatewayError:
    return GatewayError(503, message, code, headers={"retry-after": str(retry_after)})


# status -> Anthropic error `type` (https://docs.anthropic.com/en/api/errors)
_ANTHROPIC_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "not_found_error",
    413: "request_too_large",
    429: "rate_limit_error",
    503: "overloaded_error",
    529: "overloaded_error",
}


def anthropic_error_type(status: int) -> str:
    return _ANTHROPIC_TYPES.get(status, "api_error" if status >= 500 else "invalid_request_error")


def anthropic_body(e: GatewayError) -> bytes:
    """`{"type": "error", "error": {"type", "message"}}` for the Anthropic routes.

    An engine's error arrives already normalised to OpenAI's shape (`raw_body`); only its
    message is kept, and the type follows the status as Anthropic's API would send it.
    """
    message = e.message
    if e.raw_body is not None:
        try:
            obj = orjson.loads(e.raw_body)
            inner = obj.get("error") if isinstance(obj, dict) else None
            if isinstance(inner, dict) and isinstance(inner.get("message"), str):
                message = inner["message"]
        except orjson.JSONDecodeError:
            pass
    return orjson.dumps({"type": "error", "error": {"type": anthropic_error_type(e.status), "message": message}})
