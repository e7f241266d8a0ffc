"""Reasoning output layouts and tool calls, checked through raw SSE and the openai SDK."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import pytest
from openai import OpenAI

from gateway import tokens
from gateway.sim.testing import SimProcess

MSGS = [{"role": "user", "content": "Think first, then answer."}]
TOOLS: list[Any] = [
    {"type": "function", "function": {"name": "get_weather", "description": "Weather for a city", "parameters": {
        "type": "object", "properties": {"city": {"type": "string"}, "days": {"type": "integer"}},
        "required": ["city"]}}},
    {"type": "function", "function": {"name": "search", "parameters": {
        "type": "object", "properties": {"query": {"type": "string"}}}}},
]
FAST = ["--ttft-ms", "1", "--itl-ms", "0.5"]


def _content_deltas(sim: SimProcess, headers: dict[str, str] | None = None, msgs: Any = MSGS,
                    max_tokens: int = 60) -> tuple[list[str], dict[str, Any]]:
    events = sim.stream("/v1/chat/completions", {"model": "sim-model", "messages": msgs, "max_tokens": max_tokens,
                                                 "stream": True, "stream_options": {"include_usage": True}},
                        headers=headers)
    deltas = [e["choices"][0]["delta"].get("content") for e in events[:-2]]
    return [d for d in deltas if d], events[-2]["usage"]


@pytest.fixture(scope="module")
def think_sim() -> Iterator[SimProcess]:
    with SimProcess(["--reasoning", "think-tags", *FAST]) as sim:
        yield sim


def test_think_tags_split_and_merged(think_sim: SimProcess) -> None:
    split, usage = _content_deltas(think_sim, {"x-sim-think-split": "split"})
    text = "".join(split)
    assert text.startswith("<think>\n") and "\n</think>\n\n" in text
    assert "</" in split and all("</think>" not in d for d in split)  # the tag spans several deltas
    assert usage["completion_tokens"] == tokens.count_text(text) == len(split)
    merged, usage2 = _content_deltas(think_sim, {"x-sim-think-split": "merged"})
    assert "".join(merged) == text and usage2 == usage
    tag_deltas = [d for d in merged if "</think>" in d]
    assert len(tag_deltas) == 1 and tag_deltas[0].startswith("\n</think>\n\n ") and len(tag_deltas[0]) > 13
    # Without the header the choice is deterministic per prompt; both occur across prompts.
    seen = set()
    for i in range(12):
        deltas, _ = _content_deltas(think_sim, msgs=[{"role": "user", "content": f"prompt {i}"}], max_tokens=30)
        seen.add(any("</think>" in d for d in deltas))
    assert seen == {True, False}
    # Non-stream: the tags stay inline in content.
    status, raw = think_sim.request("POST", "/v1/chat/completions", {"model": "sim-model", "messages": MSGS,
                                                                     "max_tokens": 60})
    assert json.loads(raw)["choices"][0]["message"]["content"] == text


def test_r1_layout() -> None:
    with SimProcess(["--reasoning", "r1", *FAST]) as sim:
        deltas, usage = _content_deltas(sim)
        text = "".join(deltas)
        assert not text.startswith("<think>") and text.count("\n</think>\n\n") == 1
        reasoning, answer = text.split("\n</think>\n\n")
        assert reasoning and answer
        assert usage["completion_tokens"] == tokens.count_text(text)


@pytest.mark.parametrize("field,names", [("reasoning", ["reasoning"]), ("reasoning_content", ["reasoning_content"]),
                                         ("both", ["reasoning", "reasoning_content"])])
def test_reasoning_field_modes(field: str, names: list[str]) -> None:
    with SimProcess(["--reasoning", "field", "--reasoning-field", field, *FAST]) as sim:
        events = sim.stream("/v1/chat/completions", {"model": "sim-model", "messages": MSGS, "max_tokens": 50,
                                                     "stream": True, "stream_options": {"include_usage": True}})
        deltas = [e["choices"][0]["delta"] for e in events[:-2]]
        reasoning = "".join(d.get(names[0]) or "" for d in deltas)
        content = "".join(d.get("content") or "" for d in deltas)
        for d in deltas:
            if names[0] in d:
                assert all(d[n] == d[names[0]] for n in names) and "content" not in d
        assert reasoning and content and "<think>" not in content + reasoning
        r_tokens = tokens.count_text(reasoning)
        assert 0.35 <= r_tokens / 50 <= 0.45  # about the first 40% of the budget
        assert events[-2]["usage"]["completion_tokens"] == r_tokens + tokens.count_text(content) == 50
        status, raw = sim.request("POST", "/v1/chat/completions", {"model": "sim-model", "messages": MSGS,
                                                                   "max_tokens": 50})
        msg = json.loads(raw)["choices"][0]["message"]
        assert msg["content"] == content and all(msg[n] == reasoning for n in names)
        with OpenAI(base_url=sim.base_url, api_key="x", max_retries=0) as client:
            r = client.chat.completions.create(model="sim-model", messages=MSGS, max_tokens=50)  # type: ignore[arg-type]
            assert getattr(r.choices[0].message, names[0]) == reasoning
            # Budget spent inside the reasoning: no content at all, as vLLM's parser reports.
            cut = client.chat.completions.create(model="sim-model", messages=MSGS, max_tokens=1)  # type: ignore[arg-type]
            assert cut.choices[0].message.content is None and cut.choices[0].finish_reason == "length"


@pytest.fixture(scope="module")
def tool_sim() -> Iterator[SimProcess]:
    with SimProcess(["--tool-call-mode", "always", *FAST]) as sim:
        yield sim


def test_tool_call_non_stream(tool_sim: SimProcess) -> None:
    with OpenAI(base_url=tool_sim.base_url, api_key="x", max_retries=0) as client:
        r = client.chat.completions.create(model="sim-model", messages=MSGS, tools=TOOLS)  # type: ignore[arg-type]
        choice = r.choices[0]
        assert choice.finish_reason == "tool_calls" and choice.message.content is None
        calls = choice.message.tool_calls
        assert calls is not None and len(calls) == 1
        call = calls[0]
        assert call.id.startswith("chatcmpl-tool-") and call.type == "function"
        assert call.function.name == "get_weather"  # type: ignore[union-attr]
        args = json.loads(call.function.arguments)  # type: ignore[union-attr]
        assert isinstance(args["city"], str) and isinstance(args["days"], int)
        assert r.usage and r.usage.completion_tokens == (
            tokens.count_text("get_weather") + tokens.count_text(call.function.arguments))  # type: ignore[union-attr]
        chosen = client.chat.completions.create(model="sim-model", messages=MSGS, tools=TOOLS,  # type: ignore[arg-type]
                                                tool_choice={"type": "function", "function": {"name": "search"}})
        assert chosen.choices[0].message.tool_calls[0].function.name == "search"  # type: ignore[index,union-attr]
        plain = client.chat.completions.create(model="sim-model", messages=MSGS, max_tokens=5)  # type: ignore[arg-type]
        assert plain.choices[0].message.content and plain.choices[0].finish_reason == "length"
        none = client.chat.completions.create(model="sim-model", messages=MSGS, tools=TOOLS,  # type: ignore[arg-type]
                                              tool_choice="none", max_tokens=5)
        assert none.choices[0].message.content and not none.choices[0].message.tool_calls


def test_tool_call_stream_via_sdk(tool_sim: SimProcess) -> None:
    with OpenAI(base_url=tool_sim.base_url, api_key="x", max_retries=0) as client:
        chunks = list(client.chat.completions.create(model="sim-model", messages=MSGS, tools=TOOLS,  # type: ignore[arg-type]
                                                     stream=True, stream_options={"include_usage": True}))
    tool_deltas = [tc for c in chunks if c.choices for tc in (c.choices[0].delta.tool_calls or [])]
    first = tool_deltas[0]
    assert first.index == 0 and first.id and first.id.startswith("chatcmpl-tool-") and first.type == "function"
    assert first.function and first.function.name == "get_weather" and first.function.arguments is None
    # vLLM 0.32 (hermes parser): ONE chunk, content null, two entries of index 0 (name, whole arguments)
    calls = [c for c in chunks if c.choices and c.choices[0].delta.tool_calls]
    assert len(calls) == 1 and calls[0].choices[0].delta.content is None
    assert len(tool_deltas) == 2 and tool_deltas[1].index == 0 and tool_deltas[1].id is None
    args = "".join(t.function.arguments or "" for t in tool_deltas if t.function)
    assert set(json.loads(args)) == {"city", "days"}
    finals = [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason]
    assert finals == ["tool_calls"]
    usage = chunks[-1].usage
    assert usage and usage.completion_tokens == tokens.count_text("get_weather") + tokens.count_text(args)


def test_tools_accepted_in_text_mode(client: OpenAI) -> None:
    r = client.chat.completions.create(model="sim-model", messages=MSGS, tools=TOOLS, max_tokens=5)  # type: ignore[arg-type]
    assert r.choices[0].message.content and r.choices[0].finish_reason == "length"
    assert r.usage and r.usage.prompt_tokens == tokens.count_chat_prompt(MSGS, TOOLS)
