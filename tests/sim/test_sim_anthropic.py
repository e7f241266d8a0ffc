"""POST /v1/messages (+ count_tokens): vLLM's Anthropic shapes, errors, auth and the anthropic SDK."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from typing import Any

import anthropic
import pytest

from gateway import tokens
from gateway.sim.testing import SimProcess

ARGS = ["--served-model-name", "m", "--ttft-ms", "1", "--itl-ms", "0", "--max-model-len", "512", "--seed", "5"]
MSGS = [{"role": "user", "content": "hello there"}]


@pytest.fixture(scope="module")
def sim() -> Iterator[SimProcess]:
    with SimProcess(ARGS) as s:
        yield s


@pytest.fixture(scope="module")
def think_sim() -> Iterator[SimProcess]:
    with SimProcess([*ARGS, "--reasoning", "field"]) as s:
        yield s


def _post(sim: SimProcess, path: str, body: Any, headers: dict[str, str] | None = None) -> tuple[int, Any]:
    status, raw = sim.request("POST", path, body, headers)
    return status, json.loads(raw)


def _sse(sim: SimProcess, body: dict[str, Any]) -> list[tuple[str, dict[str, Any]]]:
    conn, resp = sim.open_stream("/v1/messages", body)
    try:
        assert resp.status == 200 and resp.getheader("content-type", "").startswith("text/event-stream")
        raw = resp.read().decode()
    finally:
        conn.close()
    out = []
    for frame in (f for f in raw.split("\n\n") if f):
        event, data = frame.split("\n")
        assert event.startswith("event: ") and data.startswith("data: ")
        out.append((event[7:], json.loads(data[6:])))
    return out


def test_unary_shape_and_usage(sim: SimProcess) -> None:
    before = sim.metrics()
    status, r = _post(sim, "/v1/messages", {"model": "m", "max_tokens": 300, "system": "be nice", "messages": MSGS})
    assert status == 200
    assert set(r) == {"id", "type", "role", "content", "model", "stop_reason", "usage"}  # stop_sequence: None, dropped
    assert r["type"] == "message" and r["role"] == "assistant" and r["model"] == "m"
    assert r["id"].startswith("chatcmpl-") and r["stop_reason"] == "end_turn"
    (block,) = r["content"]
    assert block["type"] == "text" and block["text"]
    n_in = tokens.count_chat_prompt([{"role": "system", "content": "be nice"}, *MSGS])
    assert r["usage"] == {"input_tokens": n_in, "output_tokens": tokens.count_text(block["text"])}
    after = sim.metrics()
    assert after["vllm:prompt_tokens_total"] - before["vllm:prompt_tokens_total"] == n_in
    assert after["vllm:generation_tokens_total"] - before["vllm:generation_tokens_total"] == r["usage"]["output_tokens"]
    status, c = _post(sim, "/v1/messages/count_tokens", {"model": "m", "system": "be nice", "messages": MSGS})
    assert status == 200 and c == {"input_tokens": n_in, "context_management": {"original_input_tokens": n_in}}


def test_max_tokens_and_stop_sequence(sim: SimProcess) -> None:
    status, r = _post(sim, "/v1/messages", {"model": "m", "max_tokens": 2, "messages": MSGS})
    assert status == 200 and r["stop_reason"] == "max_tokens" and r["usage"]["output_tokens"] == 2
    status, full = _post(sim, "/v1/messages", {"model": "m", "max_tokens": 300, "messages": MSGS})
    words = full["content"][0]["text"].split(" ")
    stop = " " + words[3]
    status, cut = _post(sim, "/v1/messages", {"model": "m", "max_tokens": 300, "messages": MSGS,
                                              "stop_sequences": [stop]})
    text = cut["content"][0]["text"]
    assert stop not in text and full["content"][0]["text"].startswith(text)
    assert cut["stop_reason"] == "stop_sequence" and cut["stop_sequence"] == stop  # vLLM 0.32
    assert cut["usage"]["output_tokens"] == tokens.count_text(text)


def test_stream_events_and_usage(sim: SimProcess) -> None:
    events = _sse(sim, {"model": "m", "max_tokens": 300, "messages": MSGS, "stream": True})
    kinds = [k for k, _ in events]
    assert [d["type"] for _, d in events] == kinds
    assert kinds[:2] == ["message_start", "content_block_start"]
    assert kinds[-4:] == ["content_block_delta", "content_block_stop", "message_delta", "message_stop"]
    start = events[0][1]["message"]
    n_in = tokens.count_chat_prompt(MSGS)
    assert start["type"] == "message" and start["role"] == "assistant"  # set explicitly in 0.32 (issue #45367)
    assert start["stop_reason"] is None and start["stop_sequence"] is None
    assert start["usage"] == {"input_tokens": n_in, "output_tokens": 0} and start["content"] == []
    assert events[1][1] == {"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}}
    deltas = [d["delta"] for k, d in events if k == "content_block_delta"]
    assert all(d["type"] == "text_delta" for d in deltas)
    text = "".join(d["text"] for d in deltas)
    assert events[-3][1] == {"type": "content_block_stop", "index": 0}
    md = events[-2][1]
    assert md["delta"] == {"stop_reason": "end_turn", "stop_sequence": None}
    assert md["usage"] == {"input_tokens": n_in, "output_tokens": tokens.count_text(text)}
    assert md["usage"]["output_tokens"] == len(deltas)
    status, unary = _post(sim, "/v1/messages", {"model": "m", "max_tokens": 300, "messages": MSGS})
    assert unary["content"][0]["text"] == text


def test_thinking_blocks(think_sim: SimProcess) -> None:
    body = {"model": "m", "max_tokens": 60, "messages": MSGS}
    status, r = _post(think_sim, "/v1/messages", body)
    thinking, text = r["content"]
    assert thinking["type"] == "thinking" and len(thinking["signature"]) == 32 and text["type"] == "text"
    assert r["usage"]["output_tokens"] == tokens.count_text(thinking["thinking"]) + tokens.count_text(text["text"])
    events = _sse(think_sim, {**body, "stream": True})
    starts = [(d["index"], d["content_block"]["type"]) for k, d in events if k == "content_block_start"]
    assert starts == [(0, "thinking"), (1, "text")]
    deltas = [(d["index"], d["delta"]) for k, d in events if k == "content_block_delta"]
    assert "".join(d["thinking"] for i, d in deltas if d["type"] == "thinking_delta") == thinking["thinking"]
    assert "".join(d["text"] for i, d in deltas if d["type"] == "text_delta") == text["text"]
    sig = [i for i, d in deltas if d["type"] == "signature_delta"]
    assert sig == [0]  # the thinking block closes with its signature
    assert [d["index"] for k, d in events if k == "content_block_stop"] == [0, 1]


@pytest.mark.parametrize(("body", "status", "etype"), [
    ({"model": "nope", "max_tokens": 5, "messages": MSGS}, 404, "NotFoundError"),
    ({"model": "m", "max_tokens": 500, "messages": [{"role": "user", "content": "word " * 100}]}, 400,
     "BadRequestError"),
])
def test_handler_errors_are_anthropic_shaped(sim: SimProcess, body: dict[str, Any], status: int, etype: str) -> None:
    got, r = _post(sim, "/v1/messages", body)
    assert got == status and r["type"] == "error" and set(r["error"]) == {"type", "message"}
    assert r["error"]["type"] == etype
    if status == 404:
        assert r["error"]["message"].startswith("The model `nope` does not exist. Valid aliases: ")
    got, c = _post(sim, "/v1/messages/count_tokens", {k: v for k, v in body.items() if k != "max_tokens"})
    if status == 404:
        assert got == 404 and c["type"] == "error" and c["error"]["type"] == "NotFoundError"
    else:  # counting has no context limit
        assert got == 200 and c["input_tokens"] == tokens.count_chat_prompt(body["messages"])


@pytest.mark.parametrize(("body", "param"), [
    ({"model": "m", "messages": MSGS}, "body.max_tokens"),
    ({"model": "m", "max_tokens": 0, "messages": MSGS}, "body.max_tokens"),
    ({"model": "m", "max_tokens": 5}, "body.messages"),
    ({"model": "m", "max_tokens": 5, "messages": [{"role": "robot", "content": "x"}]}, "body.messages.0.role"),
    ({"max_tokens": 5, "messages": MSGS}, "body.model"),
    ({"model": "m", "max_tokens": 5, "messages": MSGS, "stop_sequences": "x"}, "body.stop_sequences"),
])
def test_validation_errors_are_openai_shaped(sim: SimProcess, body: dict[str, Any], param: str) -> None:
    """FastAPI rejects these before vLLM's handler, so the body is vLLM's generic 400, not Anthropic's."""
    status, r = _post(sim, "/v1/messages", body)
    assert status == 400 and r["error"]["type"] == "Bad Request" and r["error"]["param"] == param
    assert r["error"]["code"] == 400 and "validation error" in r["error"]["message"]


def test_anthropic_sdk(sim: SimProcess) -> None:
    with anthropic.Anthropic(base_url=sim.root_url, api_key="x", max_retries=0) as client:
        msg = client.messages.create(model="m", max_tokens=300, messages=[{"role": "user", "content": "hello there"}])
        assert msg.stop_reason == "end_turn" and msg.content[0].type == "text"
        text = msg.content[0].text
        assert msg.usage.input_tokens == tokens.count_chat_prompt(MSGS)
        assert msg.usage.output_tokens == tokens.count_text(text)
        pieces = []
        usage_out = None
        stream = client.messages.create(model="m", max_tokens=300, stream=True,
                                        messages=[{"role": "user", "content": "hello there"}])
        for event in stream:
            if event.type == "content_block_delta" and event.delta.type == "text_delta":
                pieces.append(event.delta.text)
            elif event.type == "message_delta":
                usage_out = event.usage.output_tokens
        assert "".join(pieces) == text and usage_out == msg.usage.output_tokens
        with client.messages.stream(model="m", max_tokens=300,
                                    messages=[{"role": "user", "content": "hello there"}]) as s:
            final = s.get_final_message()
        assert final.content[0].text == text and final.usage.output_tokens == msg.usage.output_tokens
        count = client.messages.count_tokens(model="m", messages=[{"role": "user", "content": "hello there"}])
        assert count.input_tokens == msg.usage.input_tokens
        with pytest.raises(anthropic.NotFoundError) as err:
            client.messages.create(model="nope", max_tokens=5, messages=[{"role": "user", "content": "x"}])
        assert err.value.body["error"]["type"] == "NotFoundError"  # type: ignore[index]


def test_auth_bearer_only_unless_x_api_key_accepted() -> None:
    """vLLM's middleware checks only `Authorization: Bearer` (vllm issue #51572); the SDK's api_key
    sends `x-api-key`, its auth_token sends Bearer."""
    body = {"model": "m", "max_tokens": 3, "messages": MSGS}
    for accept in (False, True):
        args = [*ARGS, "--api-key", "k"] + (["--accept-x-api-key"] if accept else [])
        with SimProcess(args) as sim:
            assert sim.request("POST", "/v1/messages", body)[0] == 401
            status, raw = sim.request("POST", "/v1/messages", body, {"x-api-key": "k"})
            assert (status, raw) == ((200, raw) if accept else (401, b'{"error":"Unauthorized"}'))
            assert sim.request("POST", "/v1/messages", body, {"Authorization": "Bearer k"})[0] == 200
            assert sim.request("POST", "/v1/messages", body, {"x-api-key": "wrong"})[0] == 401
            with anthropic.Anthropic(base_url=sim.root_url, auth_token="k", max_retries=0) as client:
                assert client.messages.create(model="m", max_tokens=3, messages=MSGS).usage.output_tokens == 3


def test_pooling_sim_has_no_messages_api() -> None:
    with SimProcess(["--served-model-name", "m", "--runner", "pooling", "--convert", "embed"]) as sim:
        expected = {"type": "error", "error": {"type": "NotImplementedError",
                                               "message": "The model does not support Messages API"}}
        assert _post(sim, "/v1/messages", {"model": "m", "max_tokens": 5, "messages": MSGS}) == (501, expected)
        assert _post(sim, "/v1/messages/count_tokens", {"model": "m", "messages": MSGS}) == (501, expected)


def test_stream_disconnect_aborts() -> None:
    with SimProcess(["--served-model-name", "m", "--ttft-ms", "1", "--itl-ms", "20"]) as sim:
        conn, resp = sim.open_stream("/v1/messages", {"model": "m", "max_tokens": 400, "stream": True,
                                                       "messages": [{"role": "user", "content": "go"}]})
        while b"content_block_delta" not in resp.readline():
            pass
        assert sim.metrics()["vllm:num_requests_running"] == 1
        t0 = time.monotonic()
        conn.close()
        sim.wait_for(lambda m: m["vllm:num_requests_running"] == 0, timeout=2.0)
        assert time.monotonic() - t0 < 2.0
        m = sim.metrics()
        assert m['vllm:request_success_total{engine="0",model_name="m",finished_reason="abort"}'] == 1


def test_stop_sequence_in_stream_and_cache_usage_with_prompt_tokens_details() -> None:
    with SimProcess([*ARGS, "--enable-prompt-tokens-details"]) as sim:
        long_msgs = [{"role": "user", "content": "shared prefix " * 40}]
        body = {"model": "m", "max_tokens": 300, "messages": long_msgs}
        status, first = _post(sim, "/v1/messages", body)
        words = first["content"][0]["text"].split(" ")
        events = _sse(sim, {**body, "stream": True, "stop_sequences": [" " + words[2]]})
        start = events[0][1]["message"]["usage"]
        md = next(d for k, d in events if k == "message_delta")
        assert md["delta"] == {"stop_reason": "stop_sequence", "stop_sequence": " " + words[2]}
        n = tokens.count_chat_prompt(long_msgs)
        assert start == {"input_tokens": n, "output_tokens": 0}  # the first chunk has no cache details
        u = md["usage"]
        assert u["cache_read_input_tokens"] > 0 and u["cache_read_input_tokens"] % 16 == 0  # whole cached blocks
        assert u["input_tokens"] + u["cache_read_input_tokens"] + u["cache_creation_input_tokens"] == n
        u1 = first["usage"]
        assert u1["cache_read_input_tokens"] == 0 and u1["cache_creation_input_tokens"] == n // 16 * 16
        assert u1["input_tokens"] == n - u1["cache_creation_input_tokens"]
