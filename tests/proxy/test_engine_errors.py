"""Engine differences hidden from clients: model names, error shapes, embeddings, tool calls."""

from __future__ import annotations

from typing import Any

import orjson
import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st
from openai._models import construct_type
from openai._types import omit
from openai.lib._parsing._embeddings import parse_embedding_response
from openai.types import CreateEmbeddingResponse

from gateway.proxy.bodyedit import replace_model
from gateway.proxy.engine_errors import normalize_error

# --- model names (bodyedit.replace_model, used on every relayed event) --------------------------

EVENT = (
    b'data: {"id":"chatcmpl-1","object":"chat.completion.chunk","created":1,"model":"qwen-7b-engine",'
    b'"choices":[{"index":0,"delta":{"content":"hi"},"logprobs":null,"finish_reason":null}]}\n\n'
)


def _rename(data: bytes, client: str) -> bytes:
    return replace_model(data, orjson.dumps(client)[1:-1])










_names = st.text(min_size=1, max_size=20)




# --- errors ----------------------------------------------------------------------------------

VLLM_CTX = (
    "This model's maximum context length is 4096 tokens. However, you requested 5000 tokens "
    "(4000 in the messages, 1000 in the completion). Please reduce the length of the messages or completion."
)

# (engine, status, body, expected status, expected error object). Bodies as each engine
# builds them: vLLM `ErrorResponse(error=ErrorInfo(message, type, param, code=int))`,
# older vLLM / SGLang / LMDeploy flat `{"object": "error", ...}`, llama.cpp
# `format_error_response` (nested, int code, no param), SGLang auth middleware, FastAPI.
GOLDEN: list[tuple[str, int, bytes, int, dict[str, Any]]] = [
    (
        "vllm-400-context",
        400,
        orjson.dumps({"error": {"message": VLLM_CTX, "type": "BadRequestError", "param": None, "code": 400}}),
        400,
        {
            "message": VLLM_CTX,
            "type": "invalid_request_error",
            "param": "messages",
            "code": "context_length_exceeded",
        },
    ),
    (
        "vllm-400-param",
        400,
        b'{"error":{"message":"temperature must be non-negative, got -1.0.","type":"BadRequestError",'
        b'"param":"temperature","code":400}}',
        400,
        {
            "message": "temperature must be non-negative, got -1.0.",
            "type": "invalid_request_error",
            "param": "temperature",
            "code": "invalid_request",
        },
    ),
    (
        "vllm-404-model",
        404,
        b'{"error":{"message":"The model `gpt-x` does not exist.","type":"NotFoundError","param":null,"code":404}}',
        404,
        {
            "message": "The model `gpt-x` does not exist.",
            "type": "invalid_request_error",
            "param": "model",
            "code": "model_not_found",
        },
    ),
    (
        "vllm-old-flat-404",
        404,
        b'{"object":"error","message":"The model `gpt-x` does not exist.","type":"NotFoundError","param":null,'
        b'"code":404}',
        404,
        {
            "message": "The model `gpt-x` does not exist.",
            "type": "invalid_request_error",
            "param": "model",
            "code": "model_not_found",
        },
    ),
    (
        "vllm-500",
        500,
        b'{"error":{"message":"EngineCore encountered an issue.","type":"InternalServerError","param":null,"code":500}}',
        500,
        {
            "message": "EngineCore encountered an issue.",
            "type": "server_error",
            "param": None,
            "code": "upstream_error",
        },
    ),
    (
        "sglang-flat-400",
        400,
        b'{"object":"error","message":"The input (5000 tokens) is longer than the model\'s context length '
        b'(4096 tokens).","type":"BadRequestError","param":null,"code":400}',
        400,
        {
            "message": "The input (5000 tokens) is longer than the model's context length (4096 tokens).",
            "type": "invalid_request_error",
            "param": "messages",
            "code": "context_length_exceeded",
        },
    ),
    (
        "sglang-401",
        401,
        b'{"error":"Unauthorized"}',
        502,
        {"type": "server_error", "param": None, "code": "upstream_auth_failed"},
    ),
    (
        "lmdeploy-flat-404",
        404,
        b'{"object":"error","message":"The model \'qwen\' does not exist.","type":"invalid_request_error",'
        b'"param":null,"code":404}',
        404,
        {
            "message": "The model 'qwen' does not exist.",
            "type": "invalid_request_error",
            "param": "model",
            "code": "model_not_found",
        },
    ),
    (
        "lmdeploy-flat-400",
        400,
        b'{"object":"error","message":"Unsupported request: n > 1","type":"invalid_request_error","code":400}',
        400,
        {
            "message": "Unsupported request: n > 1",
            "type": "invalid_request_error",
            "param": None,
            "code": "invalid_request",
        },
    ),
    (
        "llamacpp-400-context",
        400,
        b'{"error":{"code":400,"message":"the request exceeds the available context size, try increasing it",'
        b'"type":"exceed_context_size_error","n_prompt_tokens":5000,"n_ctx":4096}}',
        400,
        {
            "message": "the request exceeds the available context size, try increasing it",
            "type": "invalid_request_error",
            "param": "messages",
            "code": "context_length_exceeded",
        },
    ),
    (
        "llamacpp-401",
        401,
        b'{"error":{"code":401,"message":"Invalid API Key","type":"authentication_error"}}',
        502,
        {"type": "server_error", "param": None, "code": "upstream_auth_failed"},
    ),
    (
        "llamacpp-503-loading",
        503,
        b'{"error":{"code":503,"message":"Loading model","type":"unavailable_error"}}',
        503,
        {"message": "Loading model", "type": "server_error", "param": None, "code": "upstream_error"},
    ),
    (
        "fastapi-404",
        404,
        b'{"detail":"Not Found"}',
        404,
        {"message": "Not Found", "type": "not_found_error", "param": None, "code": "not_found"},
    ),
    (
        "fastapi-422",
        422,
        b'{"detail":[{"type":"missing","loc":["body","messages"],"msg":"Field required","input":{}}]}',
        422,
        {
            "message": "messages: Field required",
            "type": "invalid_request_error",
            "param": "messages",
            "code": "invalid_request",
        },
    ),
    (
        "openai-shaped-429",
        429,
        b'{"error":{"message":"Too many requests","type":"rate_limit_error","param":null,"code":"rate_limit_exceeded"}}',
        429,
        {
            "message": "Too many requests",
            "type": "rate_limit_error",
            "param": None,
            "code": "rate_limit_exceeded",
        },
    ),
    (
        "string-code-kept",
        400,
        b'{"error":{"message":"bad value","type":"invalid_request_error","param":"top_p","code":"invalid_value"}}',
        400,
        {"message": "bad value", "type": "invalid_request_error", "param": "top_p", "code": "invalid_value"},
    ),
    (
        "plain-text-500",
        500,
        b"Internal Server Error",
        500,
        {"message": "Internal Server Error", "type": "server_error", "param": None, "code": "upstream_error"},
    ),
    (
        "empty-502",
        502,
        b"",
        502,
        {
            "message": "The backend answered HTTP 502 without an error message.",
            "type": "server_error",
            "param": None,
            "code": "upstream_error",
        },
    ),
    (
        "html-504",
        504,
        b"<html><body><h1>504 Gateway Time-out</h1></body></html>",
        504,
        {
            "message": "The backend answered HTTP 504 without an error message.",
            "type": "timeout_error",
            "param": None,
            "code": "upstream_error",
        },
    ),
    (
        "flat-429-no-object",
        429,
        b'{"message":"server busy","code":429}',
        429,
        {"message": "server busy", "type": "rate_limit_error", "param": None, "code": "rate_limit_exceeded"},
    ),
]


@pytest.mark.parametrize(
    ("status", "body", "want_status", "want"), [g[1:] for g in GOLDEN], ids=[g[0] for g in GOLDEN]
)
def test_normalize_error_golden(status: int, body: bytes, want_status: int, want: dict[str, Any]) -> None:
    got_status, got_body = normalize_error(status, body, "application/json")
    assert got_status == want_status
    err = orjson.loads(got_body)["error"]
    assert set(err) == {"message", "type", "param", "code"}
    assert isinstance(err["code"], str) and isinstance(err["message"], str) and err["message"]
    assert {k: err[k] for k in want} == want


@pytest.mark.parametrize("status", [401, 403])
def test_engine_auth_failure_blames_the_gateway(status: int) -> None:
    got_status, got_body = normalize_error(status, b'{"error":"Unauthorized"}', None)
    msg = orjson.loads(got_body)["error"]["message"]
    assert got_status == 502
    assert "rejected the gateway's credentials" in msg and f"HTTP {status}" in msg and "Unauthorized" in msg


def test_long_engine_message_is_truncated() -> None:
    _, out = normalize_error(500, b"x" * 10_000, "text/plain")
    assert len(orjson.loads(out)["error"]["message"]) == 2000


_json = st.recursive(
    st.none() | st.booleans() | st.integers(-1000, 1000) | st.text(max_size=10),
    lambda inner: (
        st.lists(inner, max_size=3)
        | st.dictionaries(
            st.sampled_from(["error", "message", "type", "param", "code", "detail", "object", "msg", "loc"]),
            inner,
            max_size=4,
        )
    ),
    max_leaves=8,
)


@settings(max_examples=300, deadline=None)
@given(status=st.integers(400, 599), body=st.one_of(st.binary(max_size=40), _json.map(orjson.dumps)))
# Found by this test: a FastAPI-style detail whose `loc` is null raised TypeError.
@example(status=400, body=b'{"":null,"detail":[{"loc":null}]}')
@example(status=422, body=b'{"detail":[{"loc":"body","msg":"bad"}]}')
def test_normalize_error_any_body(status: int, body: bytes) -> None:
    got_status, got_body = normalize_error(status, body, None)
    assert got_status == (502 if status in (401, 403) else status)
    err = orjson.loads(got_body)["error"]
    assert set(err) == {"message", "type", "param", "code"}
    assert isinstance(err["message"], str) and err["message"] and isinstance(err["code"], str)
    assert err["param"] is None or isinstance(err["param"], str)


# --- embeddings ------------------------------------------------------------------------------


def emb_response(vectors: list[list[float]]) -> bytes:
    return orjson.dumps(
        {
            "object": "list",
            "data": [{"object": "embedding", "index": i, "embedding": v} for i, v in enumerate(vectors)],
            "model": "bge",
            "usage": {"prompt_tokens": 4, "total_tokens": 4},
        }
    )


def sdk_decode(body: bytes) -> list[list[float]]:
    """What `client.embeddings.create()` (no encoding_format given) hands its caller."""
    obj = construct_type(type_=CreateEmbeddingResponse, value=orjson.loads(body))
    parsed = parse_embedding_response(obj, encoding_format=omit)  # type: ignore[arg-type]
    return [d.embedding for d in parsed.data]


_f32 = st.floats(width=32, allow_nan=False, allow_infinity=False)


