"""Engine differences hidden by the gateway, shown end to end with simulated engines and the openai SDK."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import ExitStack
from typing import Any

import httpx
import openai
import pytest

from gateway.sim.testing import SimProcess
from tests.gw import CLIENT_KEY, GatewayServer, auth_yaml

FAST = ["--ttft-ms", "1", "--itl-ms", "1"]
MSGS = [{"role": "user", "content": "Why is the sky blue?"}]
TOOLS = [{"type": "function", "function": {"name": "get_weather", "description": "Weather in a city",
          "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}}]


@pytest.fixture(scope="module")
def cluster() -> Iterator[dict[str, Any]]:
    with ExitStack() as st:
        sims = {
            "r1": st.enter_context(SimProcess(["--served-model-name", "eng-r1", "--reasoning", "r1", *FAST])),
            "tags": st.enter_context(SimProcess(["--served-model-name", "eng-tags", "--reasoning", "think-tags", *FAST])),
            "new": st.enter_context(SimProcess(["--served-model-name", "eng-new", "--reasoning", "field",
                                                "--reasoning-field", "reasoning", *FAST])),
            "old": st.enter_context(SimProcess(["--served-model-name", "eng-old", "--reasoning", "field",
                                                "--reasoning-field", "reasoning_content", *FAST])),
            "tools": st.enter_context(SimProcess(["--served-model-name", "eng-tools", "--tool-call-mode", "always", *FAST])),
            "emb": st.enter_context(SimProcess(["--served-model-name", "eng-emb", "--embedding", "--embedding-dim", "32"])),
            "keyed": st.enter_context(SimProcess(["--served-model-name", "eng-keyed", "--api-key", "right", *FAST])),
        }
        cfg = auth_yaml() + f"""
store: "memory://"
pools:
  r1: {{endpoints: [{sims['r1'].base_url}], reasoning: deepseek_r1, aliases: [r1-alias]}}
  tags: {{endpoints: [{sims['tags'].base_url}], reasoning: think_tags}}
  new: {{endpoints: [{sims['new'].base_url}], reasoning: passthrough}}
  old: {{endpoints: [{sims['old'].base_url}], reasoning: passthrough}}
  tools: {{endpoints: [{sims['tools'].base_url}]}}
  emb: {{kind: embedding, endpoints: [{sims['emb'].base_url}], engine_base64: false}}
  keyed: {{endpoints: [{sims['keyed'].base_url}], api_key: wrong}}
  keyed-ok: {{endpoints: [{sims['keyed'].base_url}], api_key: right}}
"""
        gw = st.enter_context(GatewayServer(cfg))
        yield {"gw": gw, **sims}


@pytest.fixture()
def oc(cluster: dict[str, Any]) -> Iterator[openai.OpenAI]:
    with openai.OpenAI(base_url=cluster["gw"].base_url, api_key=CLIENT_KEY, max_retries=0) as c:
        yield c


def _fields(obj: Any) -> tuple[str | None, str | None]:
    extra = obj.model_extra or {}
    return extra.get("reasoning"), extra.get("reasoning_content")


@pytest.mark.parametrize("pool", ["r1", "tags", "new", "old"])
@pytest.mark.parametrize("split", ["split", "merged"])
def test_reasoning_reaches_clients_in_both_fields_stream_equals_non_stream(
    oc: openai.OpenAI, pool: str, split: str
) -> None:
    h = {"x-sim-think-split": split}
    r = oc.chat.completions.create(model=pool, messages=MSGS, max_tokens=40, extra_headers=h)  # type: ignore[arg-type]
    msg = r.choices[0].message
    reasoning, reasoning_content = _fields(msg)
    assert reasoning and reasoning == reasoning_content
    assert "<think>" not in (msg.content or "") and "</think>" not in (msg.content or "")
    assert "think>" not in reasoning

    got_r: list[str] = []
    got_rc: list[str] = []
    got_c: list[str] = []
    usage = None
    for ch in oc.chat.completions.create(model=pool, messages=MSGS, max_tokens=40, stream=True,  # type: ignore[arg-type]
                                         stream_options={"include_usage": True}, extra_headers=h):
        assert ch.model == pool
        if ch.usage:
            usage = ch.usage
        for c in ch.choices:
            a, b = _fields(c.delta)
            got_r.append(a or "")
            got_rc.append(b or "")
            got_c.append(c.delta.content or "")
    assert "".join(got_r) == "".join(got_rc) == reasoning
    assert "".join(got_c) == (msg.content or "")
    # usage untouched: completion tokens already include the reasoning
    assert usage is not None and r.usage is not None and usage.completion_tokens == r.usage.completion_tokens


def test_alias_is_in_every_chunk(oc: openai.OpenAI) -> None:
    chunks = list(oc.chat.completions.create(model="r1-alias", messages=MSGS, max_tokens=10, stream=True))  # type: ignore[arg-type]
    assert chunks and all(c.model == "r1-alias" for c in chunks)


def test_assistant_messages_with_reasoning_fields_are_accepted(oc: openai.OpenAI) -> None:
    history = [*MSGS, {"role": "assistant", "content": "Rayleigh.", "reasoning_content": "thinking", "reasoning": "thinking"},
               {"role": "user", "content": "More?"}]
    r = oc.chat.completions.create(model="new", messages=history, max_tokens=5)  # type: ignore[arg-type]
    assert r.choices[0].finish_reason in ("length", "stop")


def test_tool_call_stream_through_gateway_equals_the_engine(cluster: dict[str, Any], oc: openai.OpenAI) -> None:
    def calls(client: openai.OpenAI, model: str) -> list[Any]:
        out = []
        for ch in client.chat.completions.create(model=model, messages=MSGS, tools=TOOLS, stream=True,  # type: ignore[arg-type]
                                                 tool_choice="auto", parallel_tool_calls=False):
            for c in ch.choices:
                if c.delta.tool_calls:
                    out.extend(tc.model_dump(exclude={"id"}) for tc in c.delta.tool_calls)
                if c.finish_reason:
                    out.append(c.finish_reason)
        return out

    with openai.OpenAI(base_url=cluster["tools"].base_url, api_key="x", max_retries=0) as direct:
        expected = calls(direct, "eng-tools")
    assert expected[-1] == "tool_calls" and len(expected) > 2
    assert calls(oc, "tools") == expected


def test_base64_embeddings_when_the_engine_only_speaks_floats(oc: openai.OpenAI) -> None:
    b64 = oc.embeddings.create(model="emb", input=["one", "two", "three"])  # SDK asks for base64
    flt = oc.embeddings.create(model="emb", input=["one", "two", "three"], encoding_format="float")
    assert [d.index for d in b64.data] == [0, 1, 2]
    for a, b in zip(b64.data, flt.data, strict=True):
        assert a.embedding == pytest.approx(b.embedding, abs=1e-7)
    tok = oc.embeddings.create(model="emb", input=[[1, 2, 3], [4, 5]], encoding_format="float")
    assert len(tok.data) == 2 and len(tok.data[0].embedding) == 32


def test_dimensions_rejected_unless_the_pool_supports_it(oc: openai.OpenAI) -> None:
    with pytest.raises(openai.BadRequestError) as e:
        oc.embeddings.create(model="emb", input="x", dimensions=8)
    assert e.value.body["code"] == "unsupported_parameter" and e.value.body["param"] == "dimensions"  # type: ignore[index]


def test_engine_errors_are_normalised(cluster: dict[str, Any], oc: openai.OpenAI) -> None:
    # vLLM's nested error with an integer code becomes a string code, status kept.
    with pytest.raises(openai.BadRequestError) as e:
        oc.chat.completions.create(model="new", messages=MSGS, max_tokens=100000)  # type: ignore[arg-type]
    err = e.value.body
    assert isinstance(err, dict) and isinstance(err["code"], str) and err["code"] == "context_length_exceeded"
    # The engine rejecting OUR upstream key is not the client's fault: 502, clear message.
    r = httpx.post(cluster["gw"].base_url + "/chat/completions", headers={"authorization": f"Bearer {CLIENT_KEY}"},
                   json={"model": "keyed", "messages": MSGS, "max_tokens": 2})
    assert r.status_code == 502
    assert r.json()["error"]["code"] == "upstream_auth_failed" and "credentials" in r.json()["error"]["message"]
    r2 = oc.chat.completions.create(model="keyed-ok", messages=MSGS, max_tokens=2)  # type: ignore[arg-type]
    assert r2.choices[0].message.content
