"""Request-body edits and the model-name rewrite: change one value, keep every other byte."""

from __future__ import annotations

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.proxy.bodyedit import (
    force_float_request,
    replace_model,
    request_wants_base64,
    strip_reasoning_from_request,
    with_include_usage,
)

EVENT = (
    b'data: {"id":"chatcmpl-1","object":"chat.completion.chunk","created":1,"model":"qwen-7b-engine",'
    b'"choices":[{"index":0,"delta":{"content":"hi"},"logprobs":null,"finish_reason":null}]}\n\n'
)


def _rename(data: bytes, client: str) -> bytes:
    return replace_model(data, orjson.dumps(client)[1:-1])


_names = st.text(min_size=1, max_size=20)


@pytest.mark.parametrize(
    "raw",
    [b'{"model":"m","stream":true}', b'  {"model":"m"}', b"{}", b'{"stream_options":{"include_usage":false},"model":"m"}'],
)
@pytest.mark.parametrize("continuous", [False, True])
def test_include_usage_injection_keeps_the_rest(raw: bytes, continuous: bool) -> None:
    body = orjson.loads(raw)
    out = orjson.loads(with_include_usage(raw, body, continuous))
    assert out["stream_options"]["include_usage"] is True
    assert out["stream_options"].get("continuous_usage_stats", False) is continuous
    assert {k: v for k, v in out.items() if k != "stream_options"} == {k: v for k, v in body.items() if k != "stream_options"}


def test_replace_model_only_touches_the_key() -> None:
    ev = b'data: {"id":"x","model":"engine","choices":[{"delta":{"content":"\\"model\\":\\"no\\""}}]}\n\n'
    out = replace_model(ev, b"alias")
    assert orjson.loads(out[6:])["model"] == "alias"
    assert orjson.loads(out[6:])["choices"][0]["delta"]["content"] == '"model":"no"'
    assert replace_model(b'{"model": "e"}', b"a") == b'{"model": "a"}'
    same = b'{"model":"a"}'
    assert replace_model(same, b"a") is same


def test_rename_model_in_event() -> None:
    assert _rename(EVENT, "chat") == EVENT.replace(b'"model":"qwen-7b-engine"', b'"model":"chat"')


def test_rename_model_spaced_variant() -> None:
    body = b'{"id": "x", "model": "eng", "choices": []}'
    assert _rename(body, "pool/alias") == b'{"id": "x", "model": "pool/alias", "choices": []}'


def test_rename_model_identity() -> None:
    same = EVENT.replace(b"qwen-7b-engine", b"chat")
    assert _rename(same, "chat") is same


def test_rename_model_ignores_text_that_looks_like_the_token() -> None:
    body = orjson.dumps({"choices": [{"delta": {"content": 'say "model":"eng"'}}], "model": "eng"})
    out = orjson.loads(_rename(body, "chat"))
    assert out["model"] == "chat"
    assert out["choices"][0]["delta"]["content"] == 'say "model":"eng"'


@settings(max_examples=300, deadline=None)
@given(engine=_names, client=_names, text=st.text(max_size=30), ascii_json=st.booleans())
def test_rename_model_any_names(engine: str, client: str, text: str, ascii_json: bool) -> None:
    import json

    obj = {"choices": [{"delta": {"content": f'"model":"{engine}" {text}'}}], "model": engine}
    # Engines' JSON libraries differ: UTF-8 as is (orjson, pydantic, nlohmann) or \u-escaped (json).
    raw = json.dumps(obj, separators=(",", ":")).encode() if ascii_json else orjson.dumps(obj)
    out = orjson.loads(_rename(raw, client))
    assert out == {**obj, "model": client}


def test_request_wants_base64() -> None:
    assert request_wants_base64({"encoding_format": "base64"})
    assert not request_wants_base64({"encoding_format": "float"})
    assert not request_wants_base64({"input": "x"})


def test_force_float_request() -> None:
    raw = b'{"input":["a","b"],"model":"bge","encoding_format":"base64"}'
    out = force_float_request(raw, orjson.loads(raw))
    assert out == b'{"input":["a","b"],"model":"bge","encoding_format":"float"}'
    spaced = b'{"input": "a", "encoding_format": "base64"}'
    assert orjson.loads(force_float_request(spaced, orjson.loads(spaced)))["encoding_format"] == "float"
    odd = b'{"encoding_format" :"base64","input":[1,2]}'  # unusual spacing: re-encoded
    assert orjson.loads(force_float_request(odd, orjson.loads(odd))) == {
        "encoding_format": "float",
        "input": [1, 2],
    }
    plain = b'{"input":"a"}'
    assert force_float_request(plain, orjson.loads(plain)) is plain


def test_strip_reasoning_from_request() -> None:
    req = {
        "messages": [
            {"role": "user", "content": "q", "reasoning": "keep: not an assistant message"},
            {"role": "assistant", "content": "a", "reasoning": "r", "reasoning_content": "r"},
            {"role": "assistant", "content": None, "tool_calls": []},
        ]
    }
    assert strip_reasoning_from_request(req) is True
    assert req["messages"][1] == {"role": "assistant", "content": "a"}
    assert "reasoning" in req["messages"][0]
    assert strip_reasoning_from_request(req) is False
    assert strip_reasoning_from_request({"prompt": "x"}) is False
