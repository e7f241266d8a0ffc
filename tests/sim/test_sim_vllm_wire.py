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


def test_stream_null_extras_where_vllm_puts_them(chat_sim: SimProcess) -> None:
    body = {"model": "sim-model", "messages": MESSAGES, "max_tokens": 3, "stream": True,
            "stream_options": {"include_usage": True}}
    chunks = chat_sim.stream("/v1/chat/completions", body)[:-1]
    role, *middle, finish, usage = chunks
    # The role chunk: prompt_token_ids/prompt_text at the top, no token_ids in the choice.
    assert (role["prompt_token_ids"], role["prompt_text"]) == (None, None)
    assert "token_ids" not in role["choices"][0]
    assert middle and all(c["choices"][0]["token_ids"] is None and "prompt_token_ids" not in c for c in middle)
    assert finish["choices"][0]["finish_reason"] == "length" and finish["choices"][0]["token_ids"] is None
    assert usage["choices"] == [] and "token_ids" not in usage and "prompt_token_ids" not in usage
    # With running usage, vLLM writes the usage before the prompt nulls.
    raw = chat_sim.request("POST", "/v1/chat/completions", {**body, "stream_options": {
        "include_usage": True, "continuous_usage_stats": True}})[1]
    first = raw.split(b"\n\n", 1)[0]
    assert b'"completion_tokens":0},"prompt_token_ids":null,"prompt_text":null}' in first

    text = chat_sim.stream("/v1/completions", {"model": "sim-model", "prompt": "hi", "max_tokens": 3,
                                               "stream": True})[:-1]
    assert len(text) == 3
    for c in text:
        ch = c["choices"][0]
        assert (ch["prompt_token_ids"], ch["token_ids"], ch["stop_reason"]) == (None, None, None)
        assert "prompt_token_ids" not in c  # on the choice, not the chunk, for completions


def test_reasoning_comes_before_the_tool_call() -> None:
    """vLLM with a reasoning parser and hermes: the model thinks first, then calls."""
    tools = [{"type": "function", "function": {"name": "get_weather", "parameters": {
        "type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}}]
    args = ["--served-model-name", "r", "--reasoning", "field", "--tool-call-mode", "always",
            "--ttft-ms", "1", "--itl-ms", "0"]
    with SimProcess(args) as sim:
        body = {"model": "r", "messages": MESSAGES, "tools": tools, "max_tokens": 200}
        status, raw = sim.request("POST", "/v1/chat/completions", body)
        out = json.loads(raw)
        msg, usage = out["choices"][0]["message"], out["usage"]
        assert status == 200 and out["choices"][0]["finish_reason"] == "tool_calls"
        assert msg["content"] is None and msg["reasoning"] and msg["tool_calls"][0]["function"]["name"] == "get_weather"
        call = msg["tool_calls"][0]["function"]
        reasoning_tokens = tokens.count_text(msg["reasoning"])
        assert usage["completion_tokens_details"] == {"reasoning_tokens": reasoning_tokens}
        assert usage["completion_tokens"] == (reasoning_tokens + tokens.count_text(call["name"])
                                              + tokens.count_text(call["arguments"]))

        chunks = sim.stream("/v1/chat/completions", {**body, "stream": True,
                                                     "stream_options": {"include_usage": True}})[:-1]
        deltas = [c["choices"][0]["delta"] for c in chunks if c["choices"]]
        kinds = ["reasoning" if "reasoning" in d else "call" if "tool_calls" in d else "other" for d in deltas]
        first_call = kinds.index("call")
        assert kinds.count("call") == 1 and 0 < first_call
        assert set(kinds[1:first_call]) == {"reasoning"}  # the role chunk, then reasoning, then the call
        assert "".join(d["reasoning"] for d in deltas[1:first_call]) == msg["reasoning"]
        assert deltas[first_call]["content"] is None
        assert chunks[-2]["choices"][0]["finish_reason"] == "tool_calls"
        assert chunks[-1]["usage"] == {k: v for k, v in usage.items() if k != "prompt_tokens_details"}

        # A budget that ends while the model still thinks: no call, finish `length`, content null.
        status, raw = sim.request("POST", "/v1/chat/completions", {**body, "max_tokens": 1})
        choice = json.loads(raw)["choices"][0]
        assert choice["finish_reason"] == "length" and "tool_calls" not in choice["message"]
        assert choice["message"]["content"] is None and choice["message"]["reasoning"]


def test_llamacpp_dialect_reports_cached_prompt_tokens_as_llama_server() -> None:
    """llama-server: `prompt_tokens_details.cached_tokens` always present (its prompt cache),
    and /metrics counts processed and cached prompt tokens apart, under llamacpp: names."""
    args = ["--served-model-name", "l", "--dialect", "llamacpp", "--ttft-ms", "1", "--itl-ms", "0",
            "--block-size", "1"]  # llama.cpp reuses a prefix token by token
    prompt = "Tell me a story about the river and the mountain " * 3
    with SimProcess(args) as sim:
        usages = []
        for stream in (False, False, True):
            body: dict[str, object] = {"model": "l", "prompt": prompt, "max_tokens": 3, "stream": stream}
            if stream:
                usages.append(sim.stream("/v1/completions", body)[-2]["usage"])
            else:
                usages.append(json.loads(sim.request("POST", "/v1/completions", body)[1])["usage"])
        n = tokens.count_text(prompt)
        assert [u["prompt_tokens"] for u in usages] == [n] * 3
        cached = [u["prompt_tokens_details"]["cached_tokens"] for u in usages]
        assert cached[0] == 0 and cached[1] == cached[2] == n - 1  # the last prompt token is always re-evaluated
        assert all("completion_tokens_details" not in u for u in usages)
        chat = json.loads(sim.request("POST", "/v1/chat/completions",
                                      {"model": "l", "messages": MESSAGES, "max_tokens": 2})[1])["usage"]
        assert chat["prompt_tokens_details"] == {"cached_tokens": 0}
        m = sim.metrics()
        assert not any(k.startswith("vllm:") for k in m)
        prompt_total = 3 * n + chat["prompt_tokens"]
        assert m["llamacpp:prompt_tokens_cached_total"] == sum(cached)
        assert m["llamacpp:prompt_tokens_total"] + m["llamacpp:prompt_tokens_cached_total"] == prompt_total
        assert m["llamacpp:tokens_predicted_total"] == 3 * 3 + chat["completion_tokens"]
        assert m["llamacpp:requests_processing"] == 0 and m["llamacpp:requests_deferred"] == 0
