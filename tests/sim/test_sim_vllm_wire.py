"""The simulator's wire layout follows real vLLM 0.32 (docs/realengines/README.md's table)."""

from __future__ import annotations

import json

from gateway import tokens
from gateway.sim.testing import SimProcess

MESSAGES = [{"role": "user", "content": "Tell me a story"}]


def test_completion_stream_finish_rides_on_the_last_text_chunk(chat_sim: SimProcess) -> None:
    events = chat_sim.stream("/v1/completions", {"model": "sim-model", "prompt": "hi", "max_tokens": 4,
                                                 "stream": True})
    chunks = events[:-1]
    assert len(chunks) == 4 and all(c["choices"][0]["text"] for c in chunks)  # no empty finish chunk
    assert [c["choices"][0]["finish_reason"] for c in chunks] == [None, None, None, "length"]
    assert chunks[-1]["system_fingerprint"].startswith("vllm-0.32.0-")
    assert all("system_fingerprint" not in c and "usage" not in c for c in chunks[:-1])


def test_continuous_usage_on_every_chunk(chat_sim: SimProcess) -> None:
    body = {"model": "sim-model", "messages": MESSAGES, "max_tokens": 5, "stream": True,
            "stream_options": {"include_usage": True, "continuous_usage_stats": True}}
    chunks = chat_sim.stream("/v1/chat/completions", body)[:-1]
    prompt = tokens.count_chat_prompt(MESSAGES)
    assert all(c["usage"]["prompt_tokens"] == prompt for c in chunks)
    running = [c["usage"]["completion_tokens"] for c in chunks]
    assert running[0] == 0  # the role chunk
    assert running == sorted(running) and running[-1] == 5
    assert all(c["usage"]["total_tokens"] == prompt + c["usage"]["completion_tokens"] for c in chunks)
    assert chunks[-1]["choices"] == []
    # without include_usage, vLLM ignores continuous_usage_stats
    plain = chat_sim.stream("/v1/chat/completions", {**body, "stream_options": {"continuous_usage_stats": True}})
    assert all("usage" not in c for c in plain[:-1])


def test_non_stream_body_and_message_extras(chat_sim: SimProcess) -> None:
    status, raw = chat_sim.request("POST", "/v1/chat/completions",
                                   {"model": "sim-model", "messages": MESSAGES, "max_tokens": 3})
    body = json.loads(raw)
    assert status == 200 and body["system_fingerprint"].startswith("vllm-0.32.0-")
    for k in ("service_tier", "prompt_logprobs", "prompt_token_ids", "kv_transfer_params", "metrics"):
        assert k in body and body[k] is None
    choice = body["choices"][0]
    assert choice["token_ids"] is None and choice["routed_experts"] is None
    msg = choice["message"]
    assert "tool_calls" not in msg  # vLLM omits the key when there is no call
    assert {k: msg[k] for k in ("refusal", "annotations", "audio", "function_call")} == dict.fromkeys(
        ("refusal", "annotations", "audio", "function_call"))
    assert body["usage"]["prompt_tokens_details"] is None and "completion_tokens_details" not in body["usage"]


def test_reasoning_tokens_in_usage() -> None:
    with SimProcess(["--served-model-name", "r", "--reasoning", "field", "--ttft-ms", "1", "--itl-ms", "0"]) as sim:
        status, raw = sim.request("POST", "/v1/chat/completions", {"model": "r", "messages": MESSAGES, "max_tokens": 40})
        body = json.loads(raw)
        reasoning = body["choices"][0]["message"]["reasoning"]
        assert status == 200 and reasoning
        assert body["usage"]["completion_tokens_details"] == {"reasoning_tokens": tokens.count_text(reasoning)}


def test_routes_not_mounted_for_the_model_kind(chat_sim: SimProcess) -> None:
    status, raw = chat_sim.request("POST", "/v1/embeddings", {"model": "sim-model", "input": "x"})
    assert (status, json.loads(raw)) == (404, {"detail": "Not Found"})
    with SimProcess(["--embedding", "--served-model-name", "emb", "--ttft-ms", "1"]) as emb:
        for path in ("/v1/chat/completions", "/v1/completions"):
            status, raw = emb.request("POST", path, {"model": "emb", "messages": MESSAGES, "prompt": "x"})
            assert (status, json.loads(raw)) == (404, {"detail": "Not Found"})


def test_metrics_count_the_prompt_once_per_sequence() -> None:
    with SimProcess(["--served-model-name", "m", "--ttft-ms", "1", "--itl-ms", "0"]) as sim:
        status, raw = sim.request("POST", "/v1/completions", {"model": "m", "prompt": "Hello there friend",
                                                              "max_tokens": 2, "n": 2})
        usage = json.loads(raw)["usage"]
        m = sim.metrics()
        assert status == 200 and m["vllm:prompt_tokens_total"] == 2 * usage["prompt_tokens"]
        assert m["vllm:generation_tokens_total"] == usage["completion_tokens"] == 4
        assert "vllm:gpu_cache_usage_perc" not in m and "vllm:kv_cache_usage_perc" in m


def test_validation_errors_are_shaped_as_vllm_0_32(chat_sim: SimProcess) -> None:
    status, raw = chat_sim.request("POST", "/v1/chat/completions",
                                   {"model": "sim-model", "messages": MESSAGES, "max_tokens": "many"})
    err = json.loads(raw)["error"]
    assert status == 400 and (err["type"], err["param"], err["code"]) == ("Bad Request", "body.max_tokens", 400)
    assert err["message"].startswith("1 validation error:") and "int_parsing" in err["message"]
    status, raw = chat_sim.request("POST", "/v1/chat/completions", b'{"model": "x", "messages": [')
    err = json.loads(raw)["error"]
    assert status == 400 and err["type"] == "Bad Request" and err["param"] == "body.28" and "json_invalid" in err["message"]
