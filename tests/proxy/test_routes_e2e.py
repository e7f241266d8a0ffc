"""Issue #17's routes through the gateway over real sockets: simulated vLLM engines,
our HTTP server, and the official `openai` and `anthropic` SDKs as clients.

Per route: SDK round trips (stream and not), ledger rows equal to the engine's own
counters, an allowlisted key refused outside its list, a malformed body answered in the
route's error shape, a disconnect mid-stream freeing the engine slot, an unknown model
and the wrong pool kind.
"""

from __future__ import annotations

import io
import struct
import time
from collections.abc import Iterator
from contextlib import ExitStack
from typing import Any

import anthropic
import httpx
import openai
import pytest

from gateway.metering.record import UsageRecord
from gateway.sim.testing import SimProcess

from ..gw import ADMIN_KEY, CLIENT_KEY, OTHER_KEY, GatewayServer, auth_yaml, wait_until

FAST = ["--ttft-ms", "1", "--itl-ms", "1", "--max-num-seqs", "32"]
ENGINE_KEY = "engine-secret"
CLIENT = {"authorization": f"Bearer {CLIENT_KEY}"}


@pytest.fixture(scope="module")
def cluster() -> Iterator[dict[str, Any]]:
    with ExitStack() as stack:
        # The engines serve other names than the pools and require a key: the gateway must
        # rewrite `model` both ways and always send `Authorization: Bearer <pool key>`.
        chat = stack.enter_context(SimProcess([
            "--served-model-name", "engine-chat", "--api-key", ENGINE_KEY, "--reasoning", "field",
            "--enable-prompt-tokens-details", "--responses-store", *FAST,
        ]))  # fmt: skip
        rerank = stack.enter_context(SimProcess(
            ["--served-model-name", "engine-rerank", "--runner", "pooling", "--convert", "classify", "--api-key",
             ENGINE_KEY]
        ))  # fmt: skip
        asr = stack.enter_context(SimProcess(["--served-model-name", "engine-asr", "--transcription", *FAST]))
        cfg = auth_yaml('["only-this"]') + f"""
store: "memory://"
metering: {{flush_interval: 0.05}}
pools:
  chat: {{endpoints: [{chat.base_url}], api_key: {ENGINE_KEY}, aliases: [claude-alias]}}
  rerank: {{kind: rerank, endpoints: [{rerank.base_url}], api_key: {ENGINE_KEY}}}
  asr: {{kind: transcription, endpoints: [{asr.base_url}], aliases: [whisper-1]}}
  only-this: {{endpoints: [{chat.base_url}], api_key: {ENGINE_KEY}}}
"""
        gw = stack.enter_context(GatewayServer(cfg))
        yield {"gw": gw, "chat": chat, "rerank": rerank, "asr": asr}


def oai(gw: GatewayServer, key: str = CLIENT_KEY) -> openai.OpenAI:
    return openai.OpenAI(base_url=gw.base_url, api_key=key, max_retries=0)


def claude(gw: GatewayServer, key: str = CLIENT_KEY, bearer: bool = False) -> anthropic.Anthropic:
    if bearer:  # `Authorization: Bearer`, as Claude Code sends with ANTHROPIC_AUTH_TOKEN
        return anthropic.Anthropic(base_url=gw.url, auth_token=key, max_retries=0)
    return anthropic.Anthropic(base_url=gw.url, api_key=key, max_retries=0)  # `x-api-key`


def ledger(gw: GatewayServer, since: float) -> list[UsageRecord]:
    """Records of requests started after `since` (wall clock), once all are written."""
    assert gw.call(lambda: gw.state.meter.flush()) is True
    return [r for r in gw.state.meter.store.records if r.ts >= since]


def settled(gw: GatewayServer, count: int) -> None:
    """Wait until the gateway has recorded `count` requests (a client sees the end first)."""
    assert wait_until(lambda: gw.state.meter.recorded >= count), gw.state.meter.recorded


def engine_tokens(sim: SimProcess) -> tuple[int, int]:
    m = sim.metrics()
    return int(m["vllm:prompt_tokens_total"]), int(m["vllm:generation_tokens_total"])


def running(sim: SimProcess) -> float:
    return float(sim.metrics()["vllm:num_requests_running"])


def wav(seconds: float, rate: int = 16000) -> bytes:
    data = b"\x00\x00" * int(seconds * rate)
    header = b"RIFF" + struct.pack("<I", 36 + len(data)) + b"WAVEfmt " + struct.pack(
        "<IHHIIHH", 16, 1, 1, rate, rate * 2, 2, 16
    ) + b"data" + struct.pack("<I", len(data))
    return header + data


MSG = [{"role": "user", "content": "Tell me about the sea."}]


# --- /v1/responses ---------------------------------------------------------------------------


def test_responses_sdk_non_stream_and_stream(cluster: dict[str, Any]) -> None:
    with oai(cluster["gw"]) as c:
        r = c.responses.create(model="chat", input="Tell me about the sea.", max_output_tokens=24)
        assert r.model == "chat" and r.status in ("completed", "incomplete")
        assert r.output_text and r.usage is not None and r.usage.output_tokens > 0
        assert any(item.type == "reasoning" for item in r.output)

        events = list(c.responses.create(model="chat", input="Tell me about the sea.", max_output_tokens=24,
                                          stream=True))
    types = [e.type for e in events]
    assert types[0] == "response.created" and types[-1] == "response.completed"
    assert "response.output_text.delta" in types and "error" not in types
    assert [e.sequence_number for e in events] == list(range(len(events)))  # relayed unchanged, in order
    assert events[0].response.model == "chat" and events[-1].response.model == "chat"
    text = "".join(e.delta for e in events if e.type == "response.output_text.delta")
    assert text == events[-1].response.output_text


def test_responses_stream_is_relayed_as_typed_events_without_done(cluster: dict[str, Any]) -> None:
    body = {"model": "chat", "input": "hi", "max_output_tokens": 8, "stream": True}
    with httpx.stream("POST", cluster["gw"].base_url + "/responses", json=body, headers=CLIENT, timeout=20) as r:
        assert r.status_code == 200 and r.headers["content-type"].startswith("text/event-stream")
        raw = b"".join(r.iter_raw())
    events = [e for e in raw.split(b"\n\n") if e]
    assert all(e.startswith(b"event: ") and b"\ndata: {" in e for e in events)
    assert b"[DONE]" not in raw and b"engine-chat" not in raw


def test_responses_retrieve_and_cancel_find_the_engine_that_stored_it(cluster: dict[str, Any]) -> None:
    gw = cluster["gw"]
    with oai(gw) as c:
        r = c.responses.create(model="chat", input="remember me", max_output_tokens=12)
        got = c.responses.retrieve(r.id)
        assert got.id == r.id and got.output_text == r.output_text and got.model == "chat"
        with pytest.raises(openai.BadRequestError) as e:  # vLLM: a finished response cannot be cancelled
            c.responses.cancel(r.id)
        assert set(e.value.body) == {"message", "type", "param", "code"}  # type: ignore[arg-type]
        with pytest.raises(openai.NotFoundError) as nf:
            c.responses.retrieve("resp_doesnotexist")
        assert nf.value.body["param"] == "response_id"  # type: ignore[index]
    r2 = httpx.get(gw.base_url + f"/responses/{r.id}")
    assert r2.status_code == 401 and r2.json()["error"]["code"] == "invalid_api_key"
    r2 = httpx.delete(gw.base_url + f"/responses/{r.id}", headers=CLIENT)
    assert r2.status_code == 405
    r2 = httpx.get(gw.base_url + "/responses/bad%20id", headers=CLIENT)
    assert r2.status_code == 400


def test_responses_errors_are_openai_shaped(cluster: dict[str, Any]) -> None:
    gw = cluster["gw"]
    with oai(gw, OTHER_KEY) as c, pytest.raises(openai.NotFoundError) as nf:
        c.responses.create(model="chat", input="hi")
    assert nf.value.body["code"] == "model_not_found"  # type: ignore[index]
    r = httpx.post(gw.base_url + "/responses", content=b"{not json", headers=CLIENT)
    assert r.status_code == 400 and r.json()["error"]["code"] == "invalid_json"
    r = httpx.post(gw.base_url + "/responses", json={"model": "rerank", "input": "hi"}, headers=CLIENT)
    assert r.status_code == 400 and r.json()["error"]["code"] == "model_not_supported_on_endpoint"
    r = httpx.post(gw.base_url + "/responses", json={"model": "nope", "input": "hi"}, headers=CLIENT)
    assert r.status_code == 404 and r.json()["error"]["code"] == "model_not_found"
    r = httpx.post(gw.base_url + "/responses", json={"model": "chat", "input": "hi"}, headers={"x-api-key": CLIENT_KEY})
    assert r.status_code == 401 and r.json()["error"]["type"] == "authentication_error"  # x-api-key: Anthropic only
    # The engine's own validation error, normalised to OpenAI's shape.
    r = httpx.post(gw.base_url + "/responses", json={"model": "chat", "input": "hi", "background": True},
                   headers=CLIENT)
    assert r.status_code == 400 and set(r.json()["error"]) == {"message", "type", "param", "code"}


# --- /v1/messages ----------------------------------------------------------------------------


@pytest.mark.parametrize("bearer", [False, True])
def test_messages_sdk_non_stream_stream_and_count_tokens(cluster: dict[str, Any], bearer: bool) -> None:
    with claude(cluster["gw"], bearer=bearer) as c:
        m = c.messages.create(model="chat", max_tokens=40, messages=MSG)  # type: ignore[arg-type]
        assert m.type == "message" and m.model == "chat" and m.stop_reason in ("end_turn", "max_tokens")
        kinds = [b.type for b in m.content]
        assert kinds[0] == "thinking" and "text" in kinds  # the engine's reasoning, passed through
        prompt = m.usage.input_tokens + (m.usage.cache_read_input_tokens or 0) + (
            m.usage.cache_creation_input_tokens or 0)
        assert prompt > 0 and m.usage.output_tokens > 0

        with c.messages.stream(model="claude-alias", max_tokens=40, messages=MSG) as s:  # type: ignore[arg-type]
            text = "".join(s.text_stream)
            final = s.get_final_message()
        assert final.model == "claude-alias" and text and final.usage.output_tokens > 0
        assert [b.type for b in final.content][0] == "thinking"

        n = c.messages.count_tokens(model="chat", messages=MSG)  # type: ignore[arg-type]
        assert n.input_tokens == prompt


def test_messages_stream_events_are_relayed_unchanged(cluster: dict[str, Any]) -> None:
    body = {"model": "chat", "max_tokens": 8, "messages": MSG, "stream": True}
    with httpx.stream("POST", cluster["gw"].base_url + "/messages", json=body, headers={"x-api-key": CLIENT_KEY},
                      timeout=20) as r:
        assert r.status_code == 200
        raw = b"".join(r.iter_raw())
    names = [e.split(b"\n", 1)[0] for e in raw.split(b"\n\n") if e]
    assert names[0] == b"event: message_start" and names[-1] == b"event: message_stop"
    assert b"event: message_delta" in names and b"[DONE]" not in raw and b"engine-chat" not in raw


def test_messages_errors_are_anthropic_shaped(cluster: dict[str, Any]) -> None:
    gw = cluster["gw"]
    with claude(gw, "sk-wrong") as c, pytest.raises(anthropic.AuthenticationError) as auth:
        c.messages.create(model="chat", max_tokens=8, messages=MSG)  # type: ignore[arg-type]
    assert auth.value.body == {"type": "error", "error": {"type": "authentication_error",
                                                           "message": "Invalid API key provided."}}
    with claude(gw, OTHER_KEY) as c, pytest.raises(anthropic.NotFoundError) as nf:
        c.messages.create(model="chat", max_tokens=8, messages=MSG)  # type: ignore[arg-type]
    assert nf.value.body["error"]["type"] == "not_found_error"  # type: ignore[index]
    with claude(gw, OTHER_KEY, bearer=True) as c, pytest.raises(anthropic.NotFoundError):
        c.messages.count_tokens(model="chat", messages=MSG)  # type: ignore[arg-type]

    def post(body: bytes | dict[str, Any], path: str = "/messages", **h: str) -> httpx.Response:
        headers = {"x-api-key": CLIENT_KEY, **h}
        if isinstance(body, bytes):
            return httpx.post(gw.base_url + path, content=body, headers=headers)
        return httpx.post(gw.base_url + path, json=body, headers=headers)

    for resp, status, kind in [
        (post(b"{oops"), 400, "invalid_request_error"),
        (post({"model": "nope", "max_tokens": 8, "messages": MSG}), 404, "not_found_error"),
        (post({"model": "rerank", "max_tokens": 8, "messages": MSG}), 400, "invalid_request_error"),
        (post({"model": "chat", "messages": MSG}), 400, "invalid_request_error"),  # engine: max_tokens missing
        (post({"model": "chat", "messages": MSG}, "/messages/count_tokens", **{"x-api-key": ""}), 401,
         "authentication_error"),
    ]:
        assert resp.status_code == status, resp.text
        body = resp.json()
        assert body["type"] == "error" and body["error"]["type"] == kind and body["error"]["message"], body


def test_models_list_takes_x_api_key_and_shows_every_kind(cluster: dict[str, Any]) -> None:
    r = httpx.get(cluster["gw"].base_url + "/models", headers={"x-api-key": CLIENT_KEY})
    assert r.status_code == 200 and {m["id"] for m in r.json()["data"]} == {"chat", "rerank", "asr", "only-this"}
    r = httpx.get(cluster["gw"].base_url + "/models", headers={"x-api-key": "nope"})
    assert r.status_code == 401


# --- disconnects and engine failures mid-stream -----------------------------------------------


@pytest.mark.parametrize("path, body", [
    ("/responses", {"model": "chat", "input": "go on", "max_output_tokens": 500, "stream": True}),
    ("/messages", {"model": "chat", "messages": MSG, "max_tokens": 500, "stream": True}),
])  # fmt: skip
def test_disconnect_mid_stream_frees_the_engine_slot(cluster: dict[str, Any], path: str, body: dict[str, Any]) -> None:
    gw, sim = cluster["gw"], cluster["chat"]
    # Every answer is at least 8 tokens long (the sim's shortest): 200 ms apiece outlasts the read.
    headers = {**CLIENT, "x-sim-itl-ms": "200"}
    with httpx.stream("POST", gw.base_url + path, json=body, headers=headers, timeout=20) as r:
        seen = 0
        for line in r.iter_lines():
            seen += line.startswith("data:")
            if seen >= 5:
                # Leaving the line iterator closes the connection, so look before leaving.
                assert running(sim) == 1
                break
    assert wait_until(lambda: running(sim) == 0, timeout=5)


def test_disconnect_mid_transcription_stream_frees_the_engine_slot(cluster: dict[str, Any]) -> None:
    gw, asr = cluster["gw"], cluster["asr"]
    headers = {**CLIENT, "x-sim-itl-ms": "200"}
    files = {"file": ("a.wav", wav(5.0), "audio/wav")}  # ~12 words, 200 ms apiece
    with httpx.stream("POST", gw.base_url + "/audio/transcriptions", data={"model": "asr", "stream": "true"},
                      files=files, headers=headers, timeout=20) as r:
        assert r.status_code == 200
        seen = 0
        for line in r.iter_lines():
            seen += line.startswith("data:")
            if seen >= 2:
                assert running(asr) == 1  # before leaving: leaving the iterator closes the connection
                break
    assert wait_until(lambda: running(asr) == 0, timeout=5)


def test_engine_failure_mid_stream_ends_with_the_dialects_error_event() -> None:
    with SimProcess(["--served-model-name", "m", "--reasoning", "field", *FAST]) as sim, GatewayServer(
        auth_yaml() + f"""
store: "memory://"
pools:
  m: {{endpoints: [{sim.base_url}], timeouts: {{stream_idle: 0.5}}}}
"""
    ) as gw:
        sim.set_faults(stall_after_tokens=3)
        with claude(gw) as c, pytest.raises(anthropic.APIStatusError) as e:  # noqa: SIM117
            with c.messages.stream(model="m", max_tokens=50, messages=MSG) as s:  # type: ignore[arg-type]
                for _ in s:
                    pass
        assert e.value.body["error"]["type"] == "api_error"  # type: ignore[index]
        with oai(gw) as o:
            events = list(o.responses.create(model="m", input="x", max_output_tokens=50, stream=True))
        assert events[-1].type == "error" and "stream idle" in events[-1].message
        assert events[-1].sequence_number == events[-2].sequence_number + 1


# --- rerank and score ------------------------------------------------------------------------


@pytest.mark.parametrize("path", ["/v1/rerank", "/rerank", "/v2/rerank"])
def test_rerank_spellings(cluster: dict[str, Any], path: str) -> None:
    body = {"model": "rerank", "query": "sea", "documents": ["the sea is blue", "a cat", "waves"], "top_n": 2}
    r = httpx.post(cluster["gw"].url + path, json=body, headers=CLIENT)
    assert r.status_code == 200, r.text
    out = r.json()
    assert out["model"] == "rerank" and len(out["results"]) == 2 and out["usage"]["prompt_tokens"] > 0


@pytest.mark.parametrize("path", ["/v1/score", "/score"])
def test_score_spellings(cluster: dict[str, Any], path: str) -> None:
    body = {"model": "rerank", "text_1": "sea", "text_2": ["the sea is blue", "a cat"]}
    r = httpx.post(cluster["gw"].url + path, json=body, headers=CLIENT)
    assert r.status_code == 200, r.text
    assert [d["index"] for d in r.json()["data"]] == [0, 1] and r.json()["model"] == "rerank"


def test_rerank_errors(cluster: dict[str, Any]) -> None:
    gw = cluster["gw"]
    r = httpx.post(gw.url + "/v1/rerank", json={"model": "chat", "query": "q", "documents": ["d"]}, headers=CLIENT)
    assert r.status_code == 400 and r.json()["error"]["code"] == "model_not_supported_on_endpoint"
    assert "/v1/chat/completions" in r.json()["error"]["message"]
    r = httpx.post(gw.url + "/rerank", json={"model": "rerank", "query": "q", "documents": ["d"]},
                   headers={"authorization": f"Bearer {OTHER_KEY}"})
    assert r.status_code == 404 and r.json()["error"]["code"] == "model_not_found"
    r = httpx.post(gw.url + "/v1/score", content=b"[1]", headers=CLIENT)
    assert r.status_code == 400 and r.json()["error"]["code"] == "invalid_json"
    r = httpx.post(gw.url + "/score", json={"model": "rerank", "text_1": ["a", "b"], "text_2": ["a", "b", "c"]},
                   headers=CLIENT)  # the engine's 400, OpenAI-shaped
    assert r.status_code == 400 and r.json()["error"]["type"] == "invalid_request_error"


# --- tokenize / detokenize -------------------------------------------------------------------


def test_tokenize_and_detokenize(cluster: dict[str, Any]) -> None:
    gw = cluster["gw"]
    r = httpx.post(gw.url + "/tokenize", json={"model": "chat", "prompt": "hello world"}, headers=CLIENT)
    assert r.status_code == 200, r.text
    tokens = r.json()["tokens"]
    assert r.json()["count"] == len(tokens) == 2
    r = httpx.post(gw.url + "/detokenize", json={"model": "claude-alias", "tokens": tokens}, headers=CLIENT)
    assert r.status_code == 200 and r.json()["prompt"] == "hello world"
    r = httpx.post(gw.url + "/tokenize", json={"model": "chat", "prompt": "x"})
    assert r.status_code == 401 and r.json()["error"]["code"] == "invalid_api_key"
    r = httpx.post(gw.url + "/tokenize", json={"model": "chat", "prompt": "x"},
                   headers={"authorization": f"Bearer {OTHER_KEY}"})
    assert r.status_code == 404 and r.json()["error"]["code"] == "model_not_found"
    r = httpx.post(gw.url + "/tokenize", json={"model": "asr", "prompt": "x"}, headers=CLIENT)
    assert r.status_code == 400 and r.json()["error"]["code"] == "model_not_supported_on_endpoint"


# --- audio transcriptions --------------------------------------------------------------------


def test_transcriptions_sdk_non_stream_and_stream(cluster: dict[str, Any]) -> None:
    audio = wav(2.0)
    with oai(cluster["gw"]) as c:
        t = c.audio.transcriptions.create(model="whisper-1", file=("a.wav", io.BytesIO(audio), "audio/wav"))
        assert t.text.strip()
        events = list(c.audio.transcriptions.create(model="asr", file=("a.wav", io.BytesIO(audio), "audio/wav"),
                                                    stream=True))
    # vLLM streams `transcription.chunk` objects with chat-like `choices[].delta.content`.
    chunks = [e.to_dict() for e in events]
    assert all(ch["model"] == "asr" for ch in chunks)
    assert "".join(c["delta"].get("content", "") for ch in chunks for c in ch["choices"]).strip()


def test_transcription_model_field_after_the_file_is_found_and_rewritten(cluster: dict[str, Any]) -> None:
    b = "XbOuNdArY"
    audio = wav(1.0)
    body = (f"--{b}\r\nContent-Disposition: form-data; name=\"file\"; filename=\"a.wav\"\r\n"
            f"Content-Type: audio/wav\r\n\r\n").encode() + audio + (
        f"\r\n--{b}\r\nContent-Disposition: form-data; name=\"model\"\r\n\r\nasr\r\n--{b}--\r\n").encode()
    headers = {**CLIENT, "content-type": f"multipart/form-data; boundary={b}"}
    r = httpx.post(cluster["gw"].base_url + "/audio/transcriptions", content=body, headers=headers)
    assert r.status_code == 200, r.text  # the engine only serves `engine-asr`: the field was rewritten
    assert r.json()["text"] and r.json()["usage"]["type"] == "duration"


def test_transcription_errors_are_openai_shaped(cluster: dict[str, Any]) -> None:
    url = cluster["gw"].base_url + "/audio/transcriptions"
    for content, ctype, code in [
        (b"--b\r\nno headers end", "multipart/form-data; boundary=b", "invalid_multipart"),
        (b"{}", "application/json", "invalid_content_type"),
        (b"--b\r\nContent-Disposition: form-data; name=\"file\"; filename=\"a\"\r\n\r\nxx\r\n--b--\r\n",
         "multipart/form-data; boundary=b", "missing_model"),
    ]:
        r = httpx.post(url, content=content, headers={**CLIENT, "content-type": ctype})
        assert r.status_code == 400 and r.json()["error"]["code"] == code, r.text
    with oai(cluster["gw"], OTHER_KEY) as c, pytest.raises(openai.NotFoundError):
        c.audio.transcriptions.create(model="asr", file=("a.wav", io.BytesIO(wav(0.5)), "audio/wav"))
    with oai(cluster["gw"]) as c, pytest.raises(openai.BadRequestError) as e:
        c.audio.transcriptions.create(model="chat", file=("a.wav", io.BytesIO(wav(0.5)), "audio/wav"))
    assert e.value.body["code"] == "model_not_supported_on_endpoint"  # type: ignore[index]


def test_transcription_stream_usage_is_asked_for_metered_exactly_and_hidden(cluster: dict[str, Any]) -> None:
    gw, asr = cluster["gw"], cluster["asr"]
    before, since = gw.state.meter.recorded, time.time()
    p0, g0 = engine_tokens(asr)
    with oai(gw) as c:
        plain = [e.to_dict() for e in c.audio.transcriptions.create(
            model="asr", file=("a.wav", io.BytesIO(wav(3.0)), "audio/wav"), stream=True)]
        asked = [e.to_dict() for e in c.audio.transcriptions.create(
            model="asr", file=("a.wav", io.BytesIO(wav(2.0)), "audio/wav"), stream=True,
            extra_body={"stream_include_usage": True})]
    # The gateway asked for the usage chunk on the first and hid it; the client's own request shows it.
    assert not any("usage" in e for e in plain) and all(e["choices"] for e in plain)
    assert asked[-1]["choices"] == [] and asked[-1]["usage"]["completion_tokens"] > 0
    settled(gw, before + 2)
    rows = ledger(gw, since)
    p1, g1 = engine_tokens(asr)
    assert not any(r.estimated for r in rows)
    assert sum(r.prompt_tokens for r in rows) == p1 - p0 and sum(r.completion_tokens for r in rows) == g1 - g0 > 0


def test_transcription_stream_with_usage_false_before_the_model_field(cluster: dict[str, Any]) -> None:
    # The gateway turns the client's `false` into `true` (one byte shorter): the `model` field
    # after it moves, and its rewrite to the engine's name must still hit the right bytes.
    gw = cluster["gw"]
    before, since = gw.state.meter.recorded, time.time()
    b = "XbOuNdArY"

    def field(name: str, value: str) -> bytes:
        return f"--{b}\r\nContent-Disposition: form-data; name=\"{name}\"\r\n\r\n{value}\r\n".encode()

    body = (f"--{b}\r\nContent-Disposition: form-data; name=\"file\"; filename=\"a.wav\"\r\n"
            f"Content-Type: audio/wav\r\n\r\n").encode() + wav(1.0) + b"\r\n" + field("stream", "true") + field(
        "stream_include_usage", "false") + field("model", "whisper-1") + f"--{b}--\r\n".encode()
    headers = {**CLIENT, "content-type": f"multipart/form-data; boundary={b}"}
    with httpx.stream("POST", cluster["gw"].base_url + "/audio/transcriptions", content=body, headers=headers,
                      timeout=20) as r:
        assert r.status_code == 200
        lines = [ln for ln in r.iter_lines() if ln.startswith("data: ")]
    assert lines[-1] == "data: [DONE]" and not any('"usage"' in ln for ln in lines)
    settled(gw, before + 1)
    (rec,) = ledger(gw, since)
    assert not rec.estimated and rec.completion_tokens > 0 and rec.model == "whisper-1"


def test_transcriptions_bill_audio_seconds_from_the_engine_else_the_file_header(cluster: dict[str, Any]) -> None:
    gw = cluster["gw"]
    before, since = gw.state.meter.recorded, time.time()
    opaque = bytes(range(256)) * 250  # 64,000 bytes, no known header: the sim says 2 s (16 kHz 16-bit)
    with oai(gw) as c:
        c.audio.transcriptions.create(model="asr", file=("a.wav", io.BytesIO(wav(2.5)), "audio/wav"))
        c.audio.transcriptions.create(model="asr", file=("a.bin", io.BytesIO(opaque), "audio/ogg"))
        for audio in (wav(4.2), opaque):
            list(c.audio.transcriptions.create(model="asr", file=("a", io.BytesIO(audio), "audio/wav"), stream=True))
        c.audio.transcriptions.create(model="asr", file=("a.wav", io.BytesIO(wav(1.0)), "audio/wav"),
                                      response_format="text")
        with pytest.raises(openai.BadRequestError):  # the engine refused it: nothing transcribed, nothing billed
            c.audio.transcriptions.create(model="asr", file=("a.wav", io.BytesIO(wav(3.0)), "audio/wav"),
                                          response_format="srt")
    settled(gw, before + 6)
    rows = sorted(ledger(gw, since), key=lambda r: r.ts)
    # Engine's `usage.seconds` (2.5 -> 3; opaque -> 2), then the header (4.2 -> 5; opaque stream: unknown),
    # the header again for `text` (which carries no usage), and 0 for the refusal.
    assert [r.audio_seconds for r in rows] == [3, 2, 5, 0, 1, 0]
    assert [r.stream for r in rows] == [False, False, True, True, False, False]
    usage = httpx.get(gw.url + "/admin/usage", params={"group_by": "pool", "since": "1h"},
                      headers={"authorization": f"Bearer {ADMIN_KEY}"}).json()
    assert {r["pool"]: r for r in usage["data"]}["asr"]["audio_seconds"] >= 11
    metrics = httpx.get(gw.url + "/metrics").text
    billed = [line for line in metrics.splitlines() if line.startswith("gateway_audio_seconds_total{")
              and 'pool="asr"' in line]
    assert billed and float(billed[0].rsplit(" ", 1)[1]) >= 11


# --- the ledger equals the engines' counters --------------------------------------------------


def test_ledger_equals_the_engines_counters(cluster: dict[str, Any]) -> None:
    gw, chat, rr = cluster["gw"], cluster["chat"], cluster["rerank"]
    assert wait_until(lambda: running(chat) == 0, timeout=5)
    before = gw.state.meter.recorded
    since = time.time()
    chat0, rr0 = engine_tokens(chat), engine_tokens(rr)
    with oai(gw) as o, claude(gw) as a:
        o.responses.create(model="chat", input="one", max_output_tokens=20)
        list(o.responses.create(model="chat", input="two", max_output_tokens=30, stream=True))
        a.messages.create(model="chat", max_tokens=25, messages=MSG)  # type: ignore[arg-type]
        with a.messages.stream(model="chat", max_tokens=35, messages=MSG) as s:  # type: ignore[arg-type]
            s.get_final_message()
        a.messages.count_tokens(model="chat", messages=MSG)  # type: ignore[arg-type]
    httpx.post(gw.url + "/v1/rerank", json={"model": "rerank", "query": "q", "documents": ["a b", "c"]}, headers=CLIENT)
    httpx.post(gw.url + "/score", json={"model": "rerank", "text_1": "q", "text_2": ["a b"]}, headers=CLIENT)
    httpx.post(gw.url + "/tokenize", json={"model": "chat", "prompt": "hello"}, headers=CLIENT)
    settled(gw, before + 8)
    rows = ledger(gw, since)
    by_endpoint: dict[str, list[UsageRecord]] = {}
    for r in rows:
        by_endpoint.setdefault(r.endpoint, []).append(r)
    assert {k: len(v) for k, v in by_endpoint.items()} == {
        "responses": 2, "messages": 2, "count_tokens": 1, "rerank": 1, "score": 1, "tokenize": 1,
    }
    assert not any(r.estimated for r in rows) and all(r.status == 200 for r in rows)
    gen = [r for r in rows if r.endpoint in ("responses", "messages")]
    chat1 = engine_tokens(chat)
    assert sum(r.prompt_tokens for r in gen) == chat1[0] - chat0[0]
    assert sum(r.completion_tokens for r in gen) == chat1[1] - chat0[1]
    pooled = by_endpoint["rerank"] + by_endpoint["score"]
    assert sum(r.prompt_tokens for r in pooled) == engine_tokens(rr)[0] - rr0[0] > 0
    assert all(r.total_tokens == 0 for r in by_endpoint["count_tokens"] + by_endpoint["tokenize"])


def test_cut_messages_stream_meters_the_engines_prompt_and_the_delivered_output(cluster: dict[str, Any]) -> None:
    gw, sim = cluster["gw"], cluster["chat"]
    assert wait_until(lambda: running(sim) == 0, timeout=5)
    before, since = gw.state.meter.recorded, time.time()
    p0, g0 = engine_tokens(sim)
    body = {"model": "chat", "messages": MSG, "max_tokens": 400, "stream": True}
    with httpx.stream("POST", gw.base_url + "/messages", json=body, headers={**CLIENT, "x-sim-itl-ms": "100"},
                      timeout=20) as r:
        deltas = 0
        for line in r.iter_lines():
            deltas += line.startswith("data:") and "_delta" in line and "content_block_delta" in line
            if deltas >= 3:
                break
    assert wait_until(lambda: running(sim) == 0, timeout=5)
    settled(gw, before + 1)
    (rec,) = ledger(gw, since)
    p1, g1 = engine_tokens(sim)
    assert rec.estimated and rec.status == 200 and rec.error == "client disconnected"
    assert rec.prompt_tokens == p1 - p0  # from message_start: the engine's own count
    # Output: what reached the client (the engine may have generated a token or two more).
    assert 3 <= rec.completion_tokens <= g1 - g0
