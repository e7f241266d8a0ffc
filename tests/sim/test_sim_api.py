"""The OpenAI surface of the chat sim: shapes, usage, streaming, stop, n, errors."""

from __future__ import annotations

import json
import socket

import openai
import pytest
from openai import OpenAI

from gateway import tokens
from gateway.sim.testing import SimProcess

MESSAGES = [{"role": "system", "content": "You are terse."}, {"role": "user", "content": "Name three rivers."}]


def test_health_and_models(chat_sim: SimProcess, client: OpenAI) -> None:
    assert chat_sim.request("GET", "/health") == (200, b"")
    status, body = chat_sim.request("GET", "/v1/models")
    data = json.loads(body)
    assert status == 200 and data["object"] == "list"
    assert [c["id"] for c in data["data"]] == ["sim-model", "alias-b"]
    for card in data["data"]:
        assert card["object"] == "model" and card["owned_by"] == "vllm" and card["root"] == "/models/sim-7b"
        assert card["parent"] is None and card["max_model_len"] == 512 and isinstance(card["created"], int)
    assert [m.id for m in client.models.list()] == ["sim-model", "alias-b"]


def test_chat_non_stream_exact_usage(client: OpenAI) -> None:
    r = client.chat.completions.create(model="alias-b", messages=MESSAGES, max_tokens=20)  # type: ignore[arg-type]
    assert r.model == "sim-model"  # the first served name, whatever alias was asked for
    assert r.id.startswith("chatcmpl-") and r.object == "chat.completion" and isinstance(r.created, int)
    choice = r.choices[0]
    assert choice.message.role == "assistant" and choice.message.content
    assert r.usage is not None
    assert r.usage.prompt_tokens == tokens.count_chat_prompt(MESSAGES)
    assert r.usage.completion_tokens == tokens.count_text(choice.message.content)
    assert r.usage.total_tokens == r.usage.prompt_tokens + r.usage.completion_tokens


def test_deterministic_text(client: OpenAI) -> None:
    a = client.chat.completions.create(model="sim-model", messages=MESSAGES, max_tokens=12)  # type: ignore[arg-type]
    b = client.chat.completions.create(model="sim-model", messages=MESSAGES, max_tokens=12)  # type: ignore[arg-type]
    assert a.choices[0].message.content == b.choices[0].message.content
    assert a.id != b.id


def test_finish_length_vs_stop(client: OpenAI) -> None:
    short = client.chat.completions.create(model="sim-model", messages=MESSAGES, max_tokens=3)  # type: ignore[arg-type]
    assert short.choices[0].finish_reason == "length" and short.usage and short.usage.completion_tokens == 3
    long = client.chat.completions.create(model="sim-model", messages=MESSAGES,  # type: ignore[arg-type]
                                          max_completion_tokens=400)
    assert long.choices[0].finish_reason == "stop" and long.usage
    assert 8 <= long.usage.completion_tokens <= 200  # the natural length
    default = client.chat.completions.create(model="sim-model", messages=MESSAGES)  # type: ignore[arg-type]
    assert default.choices[0].finish_reason == "stop" and default.usage and default.usage.completion_tokens == 64


def test_stop_strings(client: OpenAI) -> None:
    full = client.chat.completions.create(model="sim-model", messages=MESSAGES, max_tokens=30)  # type: ignore[arg-type]
    text = full.choices[0].message.content or ""
    stop = text[len(text) // 2: len(text) // 2 + 4]
    for stream in (False, True):
        if stream:
            chunks = list(client.chat.completions.create(model="sim-model", messages=MESSAGES,  # type: ignore[arg-type]
                                                         max_tokens=30, stop=[stop, "zzzz"], stream=True))
            out = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
            finish = chunks[-1].choices[0].finish_reason
        else:
            r = client.chat.completions.create(model="sim-model", messages=MESSAGES, max_tokens=30,  # type: ignore[arg-type]
                                               stop=stop)
            out, finish = r.choices[0].message.content or "", r.choices[0].finish_reason
            assert r.usage and r.usage.completion_tokens == tokens.count_text(out)
        assert out == text[: text.find(stop)] and finish == "stop"


def test_n_choices_differ(client: OpenAI) -> None:
    r = client.chat.completions.create(model="sim-model", messages=MESSAGES, max_tokens=10, n=3)  # type: ignore[arg-type]
    assert [c.index for c in r.choices] == [0, 1, 2]
    texts = [c.message.content for c in r.choices]
    assert len(set(texts)) == 3
    assert r.usage and r.usage.completion_tokens == sum(tokens.count_text(t or "") for t in texts)


def test_stream_with_usage(chat_sim: SimProcess) -> None:
    body = {"model": "sim-model", "messages": MESSAGES, "max_tokens": 7, "stream": True, "n": 2,
            "stream_options": {"include_usage": True}}
    events = chat_sim.stream("/v1/chat/completions", body)
    assert events[-1] == "[DONE]"
    chunks = events[:-1]
    # vLLM 0.32 (unlike OpenAI): no `"usage": null` on content chunks, only the final one has it
    assert all("usage" not in c for c in chunks[:-1])
    final = chunks[-1]
    assert final["choices"] == [] and final["usage"]["completion_tokens"] == 14
    assert "prompt_tokens_details" not in final["usage"]  # absent in stream usage, as vLLM
    assert final["system_fingerprint"].startswith("vllm-0.32.0-")
    assert all("system_fingerprint" not in c for c in chunks[:-1])
    assert final["usage"]["prompt_tokens"] == tokens.count_chat_prompt(MESSAGES)
    for idx in (0, 1):
        mine = [c["choices"][0] for c in chunks[:-1] if c["choices"][0]["index"] == idx]
        assert mine[0]["delta"] == {"role": "assistant", "content": ""}
        assert mine[-1]["delta"] == {} and mine[-1]["finish_reason"] == "length"
        assert all(len(c["delta"]["content"]) > 0 for c in mine[1:-1])
        assert len(mine) == 7 + 2  # one delta per token, plus role and finish chunks
        text = "".join(c["delta"].get("content", "") for c in mine)
        assert tokens.count_text(text) == 7
    assert {c["id"] for c in chunks} == {chunks[0]["id"]} and chunks[0]["object"] == "chat.completion.chunk"


def test_stream_without_usage(client: OpenAI, chat_sim: SimProcess) -> None:
    events = chat_sim.stream("/v1/chat/completions",
                             {"model": "sim-model", "messages": MESSAGES, "max_tokens": 4, "stream": True})
    assert events[-1] == "[DONE]" and all("usage" not in c for c in events[:-1])
    chunks = list(client.chat.completions.create(model="sim-model", messages=MESSAGES,  # type: ignore[arg-type]
                                                 max_tokens=4, stream=True))
    assert len(chunks) == 6 and all(c.usage is None for c in chunks)


def test_completions(client: OpenAI, chat_sim: SimProcess) -> None:
    r = client.completions.create(model="sim-model", prompt="Once upon a time")
    assert r.object == "text_completion" and r.id.startswith("cmpl-") and r.model == "sim-model"
    assert r.usage and r.usage.completion_tokens == 16  # OpenAI's legacy default max_tokens
    assert r.usage.prompt_tokens == tokens.count_text("Once upon a time")
    assert r.choices[0].finish_reason == "length" and tokens.count_text(r.choices[0].text) == 16
    echo = client.completions.create(model="sim-model", prompt="Once upon a time", echo=True, max_tokens=5)
    plain = client.completions.create(model="sim-model", prompt="Once upon a time", max_tokens=5)
    assert echo.choices[0].text == "Once upon a time" + plain.choices[0].text
    ids = tokens.encode("Once upon a time")
    multi = client.completions.create(model="sim-model", prompt=[ids, "other prompt"], max_tokens=3, n=2)
    assert [c.index for c in multi.choices] == [0, 1, 2, 3]
    assert multi.choices[0].text == client.completions.create(model="sim-model", prompt=[ids], max_tokens=3).choices[0].text
    events = chat_sim.stream("/v1/completions", {"model": "sim-model", "prompt": "hi", "max_tokens": 3,
                                                 "echo": True, "stream": True,
                                                 "stream_options": {"include_usage": True}})
    assert events[-1] == "[DONE]" and events[-2]["usage"]["completion_tokens"] == 3
    texts = [e["choices"][0]["text"] for e in events[:-2]]
    assert texts[0].startswith("hi") and events[-3]["choices"][0]["finish_reason"] == "length"
    assert all(e["object"] == "text_completion" for e in events[:-1])


def test_model_not_found(client: OpenAI) -> None:
    with pytest.raises(openai.NotFoundError) as exc:
        client.chat.completions.create(model="nope", messages=MESSAGES)  # type: ignore[arg-type]
    assert exc.value.body == {"message": "The model `nope` does not exist. Valid aliases: sim-model, alias-b.",
                              "type": "NotFoundError",
                              "param": "model", "code": 404}


@pytest.mark.parametrize("body", [
    b"{not json",
    b"[1, 2]",
    json.dumps({"messages": MESSAGES}).encode(),
    json.dumps({"model": "sim-model"}).encode(),
    json.dumps({"model": "sim-model", "messages": "hello"}).encode(),
    json.dumps({"model": "sim-model", "messages": []}).encode(),
    json.dumps({"model": "sim-model", "messages": [{"content": "no role"}]}).encode(),
    json.dumps({"model": "sim-model", "messages": MESSAGES, "max_tokens": -1}).encode(),
    json.dumps({"model": "sim-model", "messages": MESSAGES, "max_tokens": "10"}).encode(),
    json.dumps({"model": "sim-model", "messages": MESSAGES, "max_tokens": 1.5}).encode(),
    json.dumps({"model": "sim-model", "messages": MESSAGES, "n": 0}).encode(),
    json.dumps({"model": "sim-model", "messages": MESSAGES, "stop": 5}).encode(),
    json.dumps({"model": "sim-model", "messages": MESSAGES, "stream": "yes"}).encode(),
    json.dumps({"model": "sim-model", "messages": MESSAGES, "stream_options": {"include_usage": True}}).encode(),
    json.dumps({"model": "sim-model", "messages": MESSAGES, "tools": [{"type": "function"}]}).encode(),
    json.dumps({"model": 5, "messages": MESSAGES}).encode(),
])
def test_bad_chat_inputs_are_shaped_400s(chat_sim: SimProcess, body: bytes) -> None:
    status, raw = chat_sim.request("POST", "/v1/chat/completions", body)
    assert status == 400, raw
    err = json.loads(raw)["error"]
    assert set(err) == {"message", "type", "param", "code"}
    assert err["code"] == 400 and err["message"]
    # vLLM 0.32: pydantic's type errors are "Bad Request" with param "body.<field>"
    assert err["type"] == "BadRequestError" or (err["type"] == "Bad Request" and err["param"].startswith("body."))


@pytest.mark.parametrize("body", [
    {"model": "sim-model"}, {"model": "sim-model", "prompt": []}, {"model": "sim-model", "prompt": [1.5]},
    {"model": "sim-model", "prompt": "x", "suffix": "y"}, {"model": "sim-model", "prompt": [[-1]]},
])
def test_bad_completion_inputs(chat_sim: SimProcess, body: dict[str, object]) -> None:
    status, raw = chat_sim.request("POST", "/v1/completions", body)
    assert status == 400 and json.loads(raw)["error"]["code"] == 400


def test_context_length_errors(chat_sim: SimProcess) -> None:
    long_prompt = " the" * 600
    msgs = [{"role": "user", "content": "hi"}]
    p = tokens.count_chat_prompt(msgs)
    status, raw = chat_sim.request("POST", "/v1/chat/completions",
                                   {"model": "sim-model", "messages": msgs, "max_tokens": 600})
    assert status == 400
    assert json.loads(raw)["error"]["message"] == (
        f"This model's maximum context length is 512 tokens. However, you requested {p + 600} tokens "
        f"({p} in the messages, 600 in the completion). Please reduce the length of the messages or completion.")
    status, raw = chat_sim.request("POST", "/v1/completions", {"model": "sim-model", "prompt": long_prompt,
                                                               "max_tokens": None})
    assert status == 400 and "maximum context length is 512" in json.loads(raw)["error"]["message"]
    # Without max_tokens the output is cut by the room left in the context.
    status, raw = chat_sim.request("POST", "/v1/completions", {"model": "sim-model", "prompt": " the" * 500,
                                                               "max_tokens": None})
    r = json.loads(raw)
    assert status == 200 and r["usage"]["completion_tokens"] == 12 and r["choices"][0]["finish_reason"] == "length"


def test_unknown_path_and_method(chat_sim: SimProcess) -> None:
    assert chat_sim.request("GET", "/v1/nothing")[0] == 404
    assert chat_sim.request("GET", "/v1/chat/completions")[0] == 405
    # vLLM 0.32 does not mount /v1/embeddings for a generative model: FastAPI's bare 404
    assert chat_sim.request("POST", "/v1/embeddings", {"model": "sim-model", "input": "x"})[0] == 404


def _raw(port: int, data: bytes, until: bytes, count: int = 1) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
        s.sendall(data)
        buf = b""
        while buf.count(until) < count:
            chunk = s.recv(65536)
            if not chunk:
                break
            buf += chunk
        return buf


def test_chunked_request_body_and_pipelining(chat_sim: SimProcess) -> None:
    body = json.dumps({"model": "sim-model", "messages": MESSAGES, "max_tokens": 2}).encode()
    half = len(body) // 2
    chunked = (b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n"
               b"Content-Type: application/json\r\n\r\n"
               + b"%x\r\n%b\r\n%x\r\n%b\r\n0\r\n\r\n" % (half, body[:half], len(body) - half, body[half:]))
    get = b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n"
    out = _raw(chat_sim.port, chunked + get + chunked, b'"completion_tokens":2', 2)
    assert out.count(b"HTTP/1.1 200 OK") == 3
    assert out.index(b"content-length: 0\r\n") < out.rindex(b'"completion_tokens":2')  # answered in order


def test_expect_continue(chat_sim: SimProcess) -> None:
    body = json.dumps({"model": "sim-model", "messages": MESSAGES, "max_tokens": 2}).encode()
    head = (b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nExpect: 100-continue\r\n"
            b"Content-Length: %d\r\nConnection: close\r\n\r\n" % len(body))
    with socket.create_connection(("127.0.0.1", chat_sim.port), timeout=5) as s:
        s.sendall(head)
        assert s.recv(100).startswith(b"HTTP/1.1 100 Continue")
        s.sendall(body)
        data = b""
        while chunk := s.recv(65536):
            data += chunk
    assert data.startswith(b"HTTP/1.1 200 OK") and b"connection: close" in data


def test_garbage_request_gets_400(chat_sim: SimProcess) -> None:
    out = _raw(chat_sim.port, b"NOT HTTP AT ALL\r\n\r\n", b"}")
    assert out.startswith(b"HTTP/1.1 400")
