"""Engines' own errors reach clients OpenAI-shaped, with the right status.

Requests below pass the gateway's checks and are refused by the engine itself, so each
one exercises the normalisation of that engine's native error body.
"""

from __future__ import annotations

from typing import Any

import httpx
import pytest

from .conftest import CHAT_POOLS, LLAMA_CHAT, VLLM_CHAT, require
from .harness import CLIENT_KEY, Gateway

# More tokens than vLLM's 16384-token context and than a llama.cpp slot (65536 / 2 slots).
LONG_PROMPT = "hello " * 40000


def post(gw: Gateway, path: str, body: dict[str, Any] | None = None, raw: bytes | None = None) -> httpx.Response:
    return httpx.post(
        gw.base_url + path,
        json=body if raw is None else None,
        content=raw,
        headers={"Authorization": f"Bearer {CLIENT_KEY}", "Content-Type": "application/json"},
        timeout=60,
    )


def assert_openai_error(r: httpx.Response, status: int) -> dict[str, Any]:
    assert r.status_code == status, r.text
    body = r.json()
    assert set(body) == {"error"}, body
    err: dict[str, Any] = body["error"]
    assert set(err) == {"message", "type", "param", "code"}, err
    assert isinstance(err["message"], str) and err["message"]
    assert isinstance(err["code"], str) and err["code"]
    return err


@pytest.mark.parametrize("pool", CHAT_POOLS)
@pytest.mark.parametrize("stream", [False, True])
def test_over_long_prompt_is_a_400(gateway: Gateway, pool: str, stream: bool) -> None:
    r = post(gateway, "/completions", {"model": pool, "prompt": LONG_PROMPT, "max_tokens": 4, "stream": stream})
    err = assert_openai_error(r, 400)
    assert err["type"] == "invalid_request_error"
    assert err["code"] == "context_length_exceeded"


def test_vllm_max_tokens_over_context_is_a_400(gateway: Gateway) -> None:
    require(VLLM_CHAT)
    r = post(gateway, "/chat/completions", {
        "model": VLLM_CHAT, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 100000,
    })
    err = assert_openai_error(r, 400)
    assert err["param"] == "max_tokens"


@pytest.mark.parametrize("pool", CHAT_POOLS)
def test_wrong_type_is_a_400(gateway: Gateway, pool: str) -> None:
    r = post(gateway, "/chat/completions", {
        "model": pool, "messages": [{"role": "user", "content": "hi"}], "max_tokens": "many",
    })
    assert_openai_error(r, 400)


@pytest.mark.parametrize("pool", CHAT_POOLS)
def test_malformed_json_is_a_400(gateway: Gateway, pool: str) -> None:
    # llama.cpp alone would answer 500 server_error: the client sent bad JSON, a 400.
    r = post(gateway, "/chat/completions", raw=b'{"model": "' + pool.encode() + b'", "messages": [')
    assert_openai_error(r, 400)


def test_unknown_model_is_a_404(gateway: Gateway) -> None:
    r = post(gateway, "/chat/completions", {"model": "no-such-model", "messages": [{"role": "user", "content": "x"}]})
    err = assert_openai_error(r, 404)
    assert err["code"] == "model_not_found"


def test_llamacpp_chat_pool_without_embeddings(gateway: Gateway) -> None:
    """Embeddings sent to a chat pool are refused with an OpenAI-shaped 4xx."""
    require(LLAMA_CHAT)
    r = post(gateway, "/embeddings", {"model": LLAMA_CHAT, "input": "hi"})
    assert 400 <= r.status_code < 500
    assert_openai_error(r, r.status_code)
