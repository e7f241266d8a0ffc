"""/tokenize and /detokenize: vLLM's shapes, and counts that agree with the sim's usage."""

from __future__ import annotations

import json
from typing import Any

import pytest

from gateway import tokens
from gateway.sim.testing import SimProcess


def _post(sim: SimProcess, path: str, body: Any) -> tuple[int, Any]:
    status, raw = sim.request("POST", path, body)
    return status, json.loads(raw)


def test_prompt_round_trip(chat_sim: SimProcess) -> None:
    text = "Hello, tokenizer world!"
    status, r = _post(chat_sim, "/tokenize", {"model": "sim-model", "prompt": text})
    assert status == 200 and r == {"count": tokens.count_text(text), "max_model_len": 512,
                                   "tokens": tokens.encode(text), "token_strs": None}
    status, d = _post(chat_sim, "/detokenize", {"model": "sim-model", "tokens": r["tokens"]})
    assert status == 200 and d == {"prompt": text}
    status, s = _post(chat_sim, "/tokenize", {"prompt": text, "return_token_strs": True})
    assert "".join(s["token_strs"]) == text and len(s["token_strs"]) == s["count"]


def test_messages_count_matches_chat_usage(chat_sim: SimProcess) -> None:
    messages = [{"role": "system", "content": "be brief"}, {"role": "user", "content": "what is a token?"}]
    status, r = _post(chat_sim, "/tokenize", {"messages": messages})
    assert status == 200 and r["count"] == len(r["tokens"]) == tokens.count_chat_prompt(messages)
    status, chat = _post(chat_sim, "/v1/chat/completions", {"model": "sim-model", "messages": messages,
                                                            "max_tokens": 5})
    assert chat["usage"]["prompt_tokens"] == r["count"]
    status, r2 = _post(chat_sim, "/tokenize", {"messages": messages, "add_generation_prompt": False})
    assert r2["count"] == r["count"] - tokens.REPLY_PRIMING_TOKENS
    tools = [{"type": "function", "function": {"name": "f", "parameters": {"type": "object"}}}]
    status, r3 = _post(chat_sim, "/tokenize", {"messages": messages, "tools": tools})
    assert r3["count"] == tokens.count_chat_prompt(messages, tools)


@pytest.mark.parametrize(("path", "body", "status", "param"), [
    ("/tokenize", {"model": "nope", "prompt": "x"}, 404, "model"),
    ("/tokenize", {}, 400, "body.prompt"),
    ("/tokenize", {"prompt": 5}, 400, "body.prompt"),
    ("/tokenize", {"messages": "hi"}, 400, "body.messages"),
    ("/detokenize", {"tokens": "abc"}, 400, "body.tokens"),
    ("/detokenize", {}, 400, "body.tokens"),
    ("/detokenize", {"tokens": [1, 999999999]}, 400, "tokens"),
    ("/detokenize", {"model": "nope", "tokens": [1]}, 404, "model"),
])
def test_errors(chat_sim: SimProcess, path: str, body: dict[str, Any], status: int, param: str) -> None:
    got, r = _post(chat_sim, path, body)
    assert got == status and set(r["error"]) == {"message", "type", "param", "code"}
    assert r["error"]["param"] == param


def test_not_guarded_by_api_key_and_no_metrics() -> None:
    with SimProcess(["--served-model-name", "m", "--api-key", "k"]) as sim:
        before = sim.metrics()
        assert sim.request("POST", "/tokenize", {"prompt": "open"})[0] == 200  # outside vLLM's /v1 guard
        assert sim.request("POST", "/detokenize", {"tokens": [1, 2]})[0] == 200
        assert sim.metrics()["vllm:prompt_tokens_total"] == before["vllm:prompt_tokens_total"] == 0
