"""POST /v1/responses (stream and not), the store routes, errors, metering and the openai SDK."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from typing import Any

import pytest
from openai import OpenAI

from gateway import tokens
from gateway.sim.testing import SimProcess

ARGS = ["--served-model-name", "m", "--ttft-ms", "1", "--itl-ms", "0", "--max-model-len", "512", "--seed", "3"]


@pytest.fixture(scope="module")
def sim() -> Iterator[SimProcess]:
    with SimProcess(ARGS) as s:
        yield s


@pytest.fixture(scope="module")
def store_sim() -> Iterator[SimProcess]:
    with SimProcess([*ARGS, "--responses-store", "--reasoning", "field"]) as s:
        yield s


def _post(sim: SimProcess, body: Any, headers: dict[str, str] | None = None) -> tuple[int, Any]:
    status, raw = sim.request("POST", "/v1/responses", body, headers)
    return status, json.loads(raw)


def _sse(sim: SimProcess, body: dict[str, Any]) -> list[tuple[str, dict[str, Any]]]:
    """(event line, parsed data) per SSE frame; asserts the `event: T` / `data:` framing."""
    conn, resp = sim.open_stream("/v1/responses", body)
    try:
        assert resp.status == 200 and resp.getheader("content-type", "").startswith("text/event-stream")
        raw = resp.read().decode()
    finally:
        conn.close()
    frames = [f for f in raw.split("\n\n") if f]
    out = []
    for f in frames:
        lines = f.split("\n")
        assert len(lines) == 2 and lines[0].startswith("event: ") and lines[1].startswith("data: "), f
        out.append((lines[0][7:], json.loads(lines[1][6:])))
    return out


def test_unary_shape_and_exact_usage(sim: SimProcess) -> None:
    before = sim.metrics()
    status, r = _post(sim, {"model": "m", "input": "tell me a story", "instructions": "be brief",
                            "max_output_tokens": 300})
    assert status == 200
    for key in ("id", "created_at", "incomplete_details", "instructions", "metadata", "model", "object", "output",
                "parallel_tool_calls", "temperature", "tool_choice", "tools", "top_p", "background",
                "max_output_tokens", "previous_response_id", "reasoning", "service_tier", "status", "text",
                "top_logprobs", "truncation", "usage", "user", "presence_penalty", "frequency_penalty",
                "kv_transfer_params", "ec_transfer_params", "input_messages", "output_messages"):
        assert key in r, key
    assert r["id"].startswith("resp_") and r["object"] == "response" and r["model"] == "m"
    assert r["status"] == "completed" and r["incomplete_details"] is None and r["instructions"] == "be brief"
    (item,) = r["output"]
    assert item["type"] == "message" and item["role"] == "assistant" and item["status"] == "completed"
    assert item["id"].startswith("msg_")
    (part,) = item["content"]
    assert part["type"] == "output_text" and part["annotations"] == []
    messages = [{"role": "system", "content": "be brief"}, {"role": "user", "content": "tell me a story"}]
    n_in, n_out = tokens.count_chat_prompt(messages), tokens.count_text(part["text"])
    assert r["usage"] == {"input_tokens": n_in,
                          "input_tokens_details": {"cached_tokens": 0, "cache_write_tokens": n_in // 16 * 16,
                                                   "input_tokens_per_turn": [n_in], "cached_tokens_per_turn": [0]},
                          "output_tokens": n_out,
                          "output_tokens_details": {"reasoning_tokens": 0, "tool_output_tokens": 0,
                                                    "output_tokens_per_turn": [n_out],
                                                    "tool_output_tokens_per_turn": [0]},
                          "total_tokens": n_in + n_out}
    after = sim.metrics()
    assert after["vllm:prompt_tokens_total"] - before["vllm:prompt_tokens_total"] == n_in
    assert after["vllm:generation_tokens_total"] - before["vllm:generation_tokens_total"] == n_out


def test_length_limit_is_incomplete(sim: SimProcess) -> None:
    status, r = _post(sim, {"model": "m", "input": "x", "max_output_tokens": 3})
    assert status == 200 and r["status"] == "incomplete"
    assert r["incomplete_details"] == {"reason": "max_output_tokens"} and r["usage"]["output_tokens"] == 3
    assert r["max_output_tokens"] == 3


def test_stream_events_sequence_and_usage(sim: SimProcess) -> None:
    before = sim.metrics()
    events = _sse(sim, {"model": "m", "input": [{"role": "user", "content": "stream please"}], "stream": True})
    kinds = [k for k, _ in events]
    assert [d["type"] for _, d in events] == kinds
    assert [d["sequence_number"] for _, d in events] == list(range(len(events)))
    assert kinds[:4] == ["response.created", "response.in_progress", "response.output_item.added",
                         "response.content_part.added"]
    assert kinds[-4:] == ["response.output_text.done", "response.content_part.done", "response.output_item.done",
                          "response.completed"]
    assert set(kinds[4:-4]) == {"response.output_text.delta"}
    deltas = [d["delta"] for k, d in events if k == "response.output_text.delta"]
    text = "".join(deltas)
    created = events[0][1]["response"]
    assert created["status"] == "in_progress" and created["usage"] is None and created["output"] == []
    item_id = events[2][1]["item"]["id"]
    assert all(d["item_id"] == item_id for k, d in events[3:-2] if "item_id" in d)
    assert events[-4][1]["text"] == text
    final = events[-1][1]["response"]
    assert final["id"] == created["id"] and final["status"] == "completed"
    assert final["output"][0]["content"][0]["text"] == text
    n_in = tokens.count_chat_prompt([{"role": "user", "content": "stream please"}])
    assert final["usage"]["input_tokens"] == n_in and final["usage"]["output_tokens"] == len(deltas)
    assert final["usage"]["output_tokens"] == tokens.count_text(text)
    after = sim.metrics()
    assert after["vllm:generation_tokens_total"] - before["vllm:generation_tokens_total"] == len(deltas)


def test_reasoning_items(store_sim: SimProcess) -> None:
    status, r = _post(store_sim, {"model": "m", "input": "think first", "max_output_tokens": 40, "store": False})
    assert status == 200
    rs, msg = r["output"]
    assert rs["type"] == "reasoning" and rs["id"].startswith("rs_") and rs["summary"] == []
    reasoning = rs["content"][0]["text"]
    assert rs["content"][0]["type"] == "reasoning_text"
    text = msg["content"][0]["text"]
    u = r["usage"]
    assert u["output_tokens_details"]["reasoning_tokens"] == tokens.count_text(reasoning)
    assert u["output_tokens"] == tokens.count_text(reasoning) + tokens.count_text(text)
    events = _sse(store_sim, {"model": "m", "input": "think first", "max_output_tokens": 40, "stream": True,
                              "store": False})
    kinds = [k for k, _ in events]
    assert kinds.index("response.reasoning_text.delta") < kinds.index("response.reasoning_text.done") \
        < kinds.index("response.output_text.delta")
    added = [d for k, d in events if k == "response.output_item.added"]
    assert [a["item"]["type"] for a in added] == ["reasoning", "message"]
    assert [a["output_index"] for a in added] == [0, 1]
    done = next(d for k, d in events if k == "response.reasoning_text.done")
    assert done["text"] == reasoning  # same prompt, same seed: same output
    assert events[-1][1]["response"]["usage"] == u


def test_store_retrieve_cancel_and_previous_response(store_sim: SimProcess, sim: SimProcess) -> None:
    status, r = _post(store_sim, {"model": "m", "input": "remember this", "max_output_tokens": 20})
    assert status == 200
    status, raw = store_sim.request("GET", f"/v1/responses/{r['id']}")
    assert status == 200 and json.loads(raw) == r
    status, raw = store_sim.request("POST", f"/v1/responses/{r['id']}/cancel")
    assert status == 400 and json.loads(raw)["error"] == {
        "message": "Cannot cancel a synchronous response.", "type": "invalid_request_error",
        "param": "response_id", "code": 400}
    status, r2 = _post(store_sim, {"model": "m", "input": "and then?", "previous_response_id": r["id"],
                                   "max_output_tokens": 20})
    assert status == 200 and r2["previous_response_id"] == r["id"]
    answer = r["output"][-1]["content"][0]["text"]
    history = [{"role": "user", "content": "remember this"}, {"role": "assistant", "content": answer},
               {"role": "user", "content": "and then?"}]
    assert r2["usage"]["input_tokens"] == tokens.count_chat_prompt(history)
    for path, method in (("/v1/responses/resp_nope", "GET"), ("/v1/responses/resp_nope/cancel", "POST")):
        status, raw = store_sim.request(method, path)
        assert status == 404 and json.loads(raw)["error"] == {
            "message": "Response with id 'resp_nope' not found.", "type": "invalid_request_error",
            "param": "response_id", "code": 404}
    status, body = _post(store_sim, {"model": "m", "input": "x", "previous_response_id": "resp_nope"})
    assert status == 404 and body["error"]["param"] == "response_id"
    # store: false is honoured; and without --responses-store nothing is kept (vLLM ignores store)
    status, r3 = _post(store_sim, {"model": "m", "input": "forget", "store": False})
    assert store_sim.request("GET", f"/v1/responses/{r3['id']}")[0] == 404
    status, r4 = _post(sim, {"model": "m", "input": "forget", "store": True})
    assert status == 200 and sim.request("GET", f"/v1/responses/{r4['id']}")[0] == 404


@pytest.mark.parametrize(("body", "status", "param"), [
    ({"model": "nope", "input": "x"}, 404, "model"),
    ({"model": "m"}, 400, "body.input"),
    ({"model": "m", "input": 5}, 400, "body.input"),
    ({"model": "m", "input": "x", "max_output_tokens": "ten"}, 400, "body.max_output_tokens"),
    ({"model": "m", "input": "x", "stream": "yes"}, 400, "body.stream"),
    ({"model": "m", "input": "x", "background": True}, 400, "background"),
    ({"model": "m", "input": "word " * 600}, 400, "input"),
])
def test_errors(sim: SimProcess, body: dict[str, Any], status: int, param: str) -> None:
    got, r = _post(sim, body)
    assert got == status
    assert set(r["error"]) == {"message", "type", "param", "code"} and r["error"]["code"] == status
    assert r["error"]["param"] == param
    if status == 404:
        assert r["error"]["message"].startswith("The model `nope` does not exist. Valid aliases: ")


def test_malformed_json_and_model_default(sim: SimProcess) -> None:
    status, raw = sim.request("POST", "/v1/responses", b"{not json")
    err = json.loads(raw)["error"]
    assert status == 400 and err["type"] == "Bad Request" and err["code"] == 400
    status, r = _post(sim, {"input": "no model given"})  # vLLM's ResponsesRequest.model is optional
    assert status == 200 and r["model"] == "m"


def test_openai_sdk(sim: SimProcess) -> None:
    with OpenAI(base_url=sim.base_url, api_key="x", max_retries=0) as client:
        r = client.responses.create(model="m", input="hello sdk", max_output_tokens=300)
        assert r.status == "completed" and r.output_text
        assert r.usage is not None and r.usage.output_tokens == tokens.count_text(r.output_text)
        assert r.usage.input_tokens == tokens.count_chat_prompt([{"role": "user", "content": "hello sdk"}])
        text = ""
        final = None
        with client.responses.create(model="m", input="hello sdk", max_output_tokens=300, stream=True) as stream:
            for event in stream:
                if event.type == "response.output_text.delta":
                    text += event.delta
                elif event.type == "response.completed":
                    final = event.response
        assert final is not None and final.output_text == text == r.output_text
        assert final.usage is not None and final.usage.total_tokens == r.usage.total_tokens


def test_disconnect_aborts_and_gauges_show_the_request() -> None:
    with SimProcess(["--served-model-name", "m", "--ttft-ms", "1", "--itl-ms", "20", "--output-tokens", "200"]) as sim:
        conn, resp = sim.open_stream("/v1/responses", {"model": "m", "input": "long", "stream": True})
        assert resp.status == 200
        while b"response.output_text.delta" not in resp.readline():
            pass
        sim.wait_for(lambda m: m["vllm:num_requests_running"] == 1)
        t0 = time.monotonic()
        conn.close()
        sim.wait_for(lambda m: m["vllm:num_requests_running"] == 0, timeout=2.0)
        assert time.monotonic() - t0 < 2.0
        m = sim.metrics()
        assert m['vllm:request_success_total{engine="0",model_name="m",finished_reason="abort"}'] == 1
        assert 0 < m["vllm:generation_tokens_total"] < 200
