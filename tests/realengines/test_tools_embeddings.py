"""Tool calls and embeddings through the gateway on real engines."""

from __future__ import annotations

import json
import math
from typing import Any

import pytest
from openai import OpenAI

from .conftest import CHAT_POOLS, EMBED_POOLS, LLAMA_EMBED, VLLM_EMBED, require
from .harness import RealEngines

ASK = [{"role": "user", "content": "What is the weather in Paris?"}]


@pytest.mark.parametrize("pool", CHAT_POOLS)
def test_tool_call(client: OpenAI, engines: RealEngines, pool: str) -> None:
    tool: Any = engines.expect["weather_tool"]
    r = client.chat.completions.create(model=pool, messages=ASK, tools=[tool], max_tokens=32)
    (choice,) = r.choices
    assert choice.finish_reason == "tool_calls"
    (call,) = choice.message.tool_calls or []
    assert call.type == "function" and call.id
    assert call.function.name == engines.expect["tool_name"]
    assert json.loads(call.function.arguments) == engines.expect["tool_arguments"]
    assert not (choice.message.content or "").strip()


@pytest.mark.parametrize("pool", CHAT_POOLS)
def test_tool_call_stream(client: OpenAI, engines: RealEngines, pool: str) -> None:
    tool: Any = engines.expect["weather_tool"]
    stream = client.chat.completions.create(model=pool, messages=ASK, tools=[tool], max_tokens=32, stream=True)
    name, args, ids, finishes, content = "", "", set(), [], ""
    for chunk in stream:
        for c in chunk.choices:
            content += c.delta.content or ""
            for tc in c.delta.tool_calls or []:
                assert tc.index == 0
                if tc.id:
                    ids.add(tc.id)
                if tc.function and tc.function.name:
                    name += tc.function.name
                if tc.function and tc.function.arguments:
                    args += tc.function.arguments
            if c.finish_reason:
                finishes.append(c.finish_reason)
    assert len(ids) == 1
    assert name == engines.expect["tool_name"]
    assert json.loads(args) == engines.expect["tool_arguments"]
    assert finishes == ["tool_calls"]
    assert not content.strip()


TEXTS = ["hello world", "the weather in Paris", "hello world"]


def norm(v: list[float]) -> float:
    return math.sqrt(sum(x * x for x in v))


@pytest.mark.parametrize("pool", EMBED_POOLS)
def test_embeddings_float_and_base64(client: OpenAI, engines: RealEngines, pool: str) -> None:
    f = client.embeddings.create(model=pool, input=TEXTS, encoding_format="float")
    assert f.model == pool
    assert [d.index for d in f.data] == [0, 1, 2]
    vecs = [d.embedding for d in f.data]
    assert all(len(v) == engines.expect["hidden"] for v in vecs)
    assert all(abs(norm(v) - 1) < 1e-3 for v in vecs)
    # A function of the text, not noise. Equal within float32 rounding, not bit for bit:
    # on an AVX-512 CPU llama.cpp summed the same text's tokens in another order at the
    # third position of the batch (0.050269715 vs 0.050269711).
    assert vecs[0] == pytest.approx(vecs[2], abs=1e-6)
    assert max(abs(a - c) for a, c in zip(vecs[0], vecs[1], strict=True)) > 1e-3
    assert f.usage.prompt_tokens > 0 and f.usage.total_tokens == f.usage.prompt_tokens
    # The SDK asks for base64 by default and decodes it: the same float32 numbers.
    b = client.embeddings.create(model=pool, input=TEXTS)
    for got, want in zip([d.embedding for d in b.data], vecs, strict=True):
        assert got == pytest.approx(want, abs=1e-6)


def test_engines_agree_on_embeddings(client: OpenAI) -> None:
    """Both engines mean-pool the same weights: the same text gives the same vector."""
    require(VLLM_EMBED, LLAMA_EMBED)
    v = client.embeddings.create(model=VLLM_EMBED, input=TEXTS[:2], encoding_format="float")
    ll = client.embeddings.create(model=LLAMA_EMBED, input=TEXTS[:2], encoding_format="float")
    for a, b in zip(v.data, ll.data, strict=True):
        cos = sum(x * y for x, y in zip(a.embedding, b.embedding, strict=True))
        assert cos > 0.999
