"""Chat and completions through the gateway on real vLLM and llama.cpp, with the openai SDK.

The tiny model is deterministic (scripts/realengines/make_tiny_model.py): a chat answer is
`<think>` REASONING `</think>` ANSWER and stops; a completion of an ordinary prompt is the
cycle " alpha beta gamma delta ..." exactly `max_tokens` long. So every assertion below
is about exact text, not "something came back".
"""

from __future__ import annotations

from typing import Any

import pytest
from openai import OpenAI

from .conftest import ALIAS, CHAT_POOLS, LLAMA_CHAT, VLLM_CHAT
from .harness import RealEngines

QUESTION = [{"role": "user", "content": "What is the weather in Paris?"}]


def extra(obj: Any, name: str) -> Any:
    """A field the SDK's model does not declare (reasoning, reasoning_content)."""
    return (obj.model_extra or {}).get(name)


def cycle_text(engines: RealEngines, n: int, start: int = 0) -> str:
    cycle = engines.expect["cycle"]
    return "".join(cycle[(start + i) % len(cycle)] for i in range(n))


@pytest.mark.parametrize("pool", CHAT_POOLS)
def test_chat_reasoning_and_answer(client: OpenAI, engines: RealEngines, pool: str) -> None:
    r = client.chat.completions.create(model=pool, messages=QUESTION, max_tokens=32)
    (choice,) = r.choices
    assert choice.finish_reason == "stop"
    assert r.model == pool
    assert choice.message.content.strip() == engines.expect["answer"].strip()
    # The engine split the reasoning; clients get it under both names.
    want = engines.expect["reasoning"].strip()
    assert extra(choice.message, "reasoning").strip() == want
    assert extra(choice.message, "reasoning_content").strip() == want
    assert r.usage is not None and r.usage.completion_tokens >= 4
    assert r.usage.total_tokens == r.usage.prompt_tokens + r.usage.completion_tokens


@pytest.mark.parametrize("pool", CHAT_POOLS)
@pytest.mark.parametrize("include_usage", [False, True])
def test_chat_stream(client: OpenAI, engines: RealEngines, pool: str, include_usage: bool) -> None:
    kw: dict[str, Any] = {"stream_options": {"include_usage": True}} if include_usage else {}
    stream = client.chat.completions.create(model=pool, messages=QUESTION, max_tokens=32, stream=True, **kw)
    chunks = list(stream)
    reasoning = "".join(extra(c.choices[0].delta, "reasoning") or "" for c in chunks if c.choices)
    reasoning_content = "".join(
        extra(c.choices[0].delta, "reasoning_content") or "" for c in chunks if c.choices
    )
    content = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert content.strip() == engines.expect["answer"].strip()
    # vLLM 0.32's streaming deepseek_r1 parser leaves the literal `<think>` in the first
    # reasoning delta when `<think>` and the next token leave the engine in one step (seen
    # on a loaded machine); passthrough forwards it. Tolerated here, listed as a finding.
    assert reasoning.strip().removeprefix("<think>").strip() == engines.expect["reasoning"].strip()
    assert reasoning_content == reasoning
    finishes = [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason]
    assert finishes == ["stop"]
    assert all(c.model == pool for c in chunks)
    with_usage = [c for c in chunks if c.usage is not None]
    if include_usage:
        # OpenAI's layout: one final chunk with no choices carries the totals.
        assert len(with_usage) == 1 and with_usage[0] is chunks[-1] and chunks[-1].choices == []
        assert with_usage[0].usage.completion_tokens >= 4
    else:
        # The gateway asked the engine for usage (to meter); the client must not see it.
        assert with_usage == []
        assert all(c.choices for c in chunks)


@pytest.mark.parametrize("pool", CHAT_POOLS)
def test_chat_n2(client: OpenAI, engines: RealEngines, pool: str) -> None:
    r = client.chat.completions.create(model=pool, messages=QUESTION, max_tokens=32, n=2)
    assert sorted(c.index for c in r.choices) == [0, 1]
    for c in r.choices:
        assert c.message.content.strip() == engines.expect["answer"].strip()
        assert c.finish_reason == "stop"
    stream = client.chat.completions.create(model=pool, messages=QUESTION, max_tokens=32, n=2, stream=True)
    content: dict[int, str] = {0: "", 1: ""}
    finish: dict[int, str] = {}
    for chunk in stream:
        for c in chunk.choices:
            content[c.index] += c.delta.content or ""
            if c.finish_reason:
                finish[c.index] = c.finish_reason
    assert {i: t.strip() for i, t in content.items()} == {i: engines.expect["answer"].strip() for i in (0, 1)}
    assert finish == {0: "stop", 1: "stop"}


@pytest.mark.parametrize("pool", CHAT_POOLS)
def test_alias_in_model(client: OpenAI, engines: RealEngines, pool: str) -> None:
    alias = ALIAS[pool]
    r = client.chat.completions.create(model=alias, messages=QUESTION, max_tokens=32)
    assert r.model == alias
    assert r.choices[0].message.content.strip() == engines.expect["answer"].strip()
    chunks = list(client.completions.create(model=alias, prompt="Hello there", max_tokens=3, stream=True))
    assert {c.model for c in chunks} == {alias}


@pytest.mark.parametrize("pool", CHAT_POOLS)
def test_completion_exact_length(client: OpenAI, engines: RealEngines, pool: str) -> None:
    r = client.completions.create(model=pool, prompt="Hello there", max_tokens=6)
    (choice,) = r.choices
    assert choice.text == cycle_text(engines, 6)
    assert choice.finish_reason == "length"
    assert r.usage is not None and r.usage.completion_tokens == 6


@pytest.mark.parametrize(
    "pool",
    [
        VLLM_CHAT,
        # llama.cpp reports ONE choice's usage when n > 1; the gateway corrects it (proxy.n_usage).
        LLAMA_CHAT,
    ],
)
def test_completion_n2_usage_counts_both_choices(client: OpenAI, engines: RealEngines, pool: str) -> None:
    r2 = client.completions.create(model=pool, prompt="Hello there", max_tokens=3, n=2)
    assert [c.text for c in sorted(r2.choices, key=lambda c: c.index)] == [cycle_text(engines, 3)] * 2
    assert r2.usage is not None and r2.usage.completion_tokens == 6


def completion_stream(client: OpenAI, pool: str, include_usage: bool) -> list[Any]:
    kw: dict[str, Any] = {"stream_options": {"include_usage": True}} if include_usage else {}
    return list(client.completions.create(model=pool, prompt="Hello there", max_tokens=5, stream=True, **kw))


@pytest.mark.parametrize(
    "pool",
    [
        VLLM_CHAT,
        # llama.cpp puts usage on its last /v1/completions content chunk; the gateway strips it.
        LLAMA_CHAT,
    ],
)
def test_completion_stream_usage_stripped(client: OpenAI, engines: RealEngines, pool: str) -> None:
    chunks = completion_stream(client, pool, include_usage=False)
    assert "".join(c.choices[0].text for c in chunks if c.choices) == cycle_text(engines, 5)
    assert [c for c in chunks if c.usage is not None] == []


@pytest.mark.parametrize("pool", CHAT_POOLS)
def test_completion_stream_usage_asked(client: OpenAI, engines: RealEngines, pool: str) -> None:
    chunks = completion_stream(client, pool, include_usage=True)
    assert "".join(c.choices[0].text for c in chunks if c.choices) == cycle_text(engines, 5)
    usage = [c.usage for c in chunks if c.usage is not None]
    assert len(usage) == 1 and usage[0].completion_tokens == 5
    finishes = [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason]
    assert finishes == ["length"]
