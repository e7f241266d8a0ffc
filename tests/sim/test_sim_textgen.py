"""Unit tests of the deterministic text: exact token accounting is the point of the design."""

from __future__ import annotations

import json

from hypothesis import given, settings
from hypothesis import strategies as st

from gateway import tokens
from gateway.sim import textgen


def test_vocab_words_are_single_plain_tokens() -> None:
    assert len(textgen.VOCAB) >= 128
    for w in textgen.VOCAB:
        assert w.startswith(" ") and w[1:].isalpha() and w[1:].islower()
        assert len(tokens.encode(w)) == 1, w


@settings(max_examples=200, deadline=None, database=None)
@given(st.lists(st.sampled_from(textgen.VOCAB), min_size=1, max_size=60))
def test_concatenations_retokenize_one_token_per_word(ws: list[str]) -> None:
    assert tokens.encode("".join(ws)) == [tokens.encode(w)[0] for w in ws]


def test_tag_pieces_are_tokens() -> None:
    assert "".join(textgen.OPEN_PIECES) == "<think>\n"
    assert "".join(textgen.CLOSE_PIECES) == "\n</think>\n\n"
    assert "</" in textgen.CLOSE_PIECES  # the closing tag is naturally split over several tokens


@settings(max_examples=150, deadline=None, database=None)
@given(key=st.integers(0, 2**64 - 1), limit=st.integers(1, 260), natural=st.integers(8, 200),
       reasoning=st.sampled_from(["none", "field", "think-tags", "r1"]), split=st.booleans())
def test_plan_usage_equals_tokenized_text(key: int, limit: int, natural: int, reasoning: str,
                                          split: bool) -> None:
    plan = textgen.plan_text(key, limit, natural, [], reasoning, split)
    text = "".join(t for _, t, _ in plan.deltas)
    assert plan.completion_tokens == tokens.count_text(text)
    assert plan.completion_tokens == sum(n for _, _, n in plan.deltas)
    assert plan.completion_tokens <= limit
    if reasoning == "none":
        assert plan.finish_reason == ("length" if limit < natural else "stop")


def test_plans_are_deterministic_and_differ_by_key() -> None:
    a = textgen.plan_text(1, 50, 40, [])
    b = textgen.plan_text(1, 50, 40, [])
    c = textgen.plan_text(2, 50, 40, [])
    assert a.deltas == b.deltas
    assert a.deltas != c.deltas


@settings(max_examples=150, deadline=None, database=None)
@given(key=st.integers(0, 2**32), cut=st.integers(1, 12), reasoning=st.sampled_from(["none", "think-tags"]))
def test_stop_strings_cut_text_and_usage_matches(key: int, cut: int, reasoning: str) -> None:
    full = textgen.plan_text(key, 100, 60, [], reasoning)
    text = "".join(t for _, t, _ in full.deltas)
    stop = text[30:30 + cut]
    plan = textgen.plan_text(key, 100, 60, [stop], reasoning)
    out = "".join(t for _, t, _ in plan.deltas)
    assert stop not in out
    assert out == text[: text.find(stop)]
    assert plan.finish_reason == "stop" and plan.stop_reason == stop
    assert plan.completion_tokens == tokens.count_text(out)


def test_think_tag_layouts() -> None:
    tags = textgen.plan_text(9, 100, 50, [], "think-tags", True)
    content = tags.text("content") or ""
    assert content.startswith("<think>\n") and "\n</think>\n\n" in content
    reasoning_part = content[len("<think>\n"): content.index("\n</think>")]
    assert 0.3 <= tokens.count_text(reasoning_part) / tags.completion_tokens <= 0.5
    assert all("</think>" not in t for _, t, _ in tags.deltas)  # split over deltas
    merged = textgen.plan_text(9, 100, 50, [], "think-tags", False)
    assert merged.text("content") == content and merged.completion_tokens == tags.completion_tokens
    assert any(t.startswith("\n</think>\n\n ") and len(t) > len("\n</think>\n\n ") for _, t, _ in merged.deltas)
    r1 = textgen.plan_text(9, 100, 50, [], "r1", True)
    assert not (r1.text("content") or "").startswith("<think>") and "\n</think>\n\n" in (r1.text("content") or "")


def test_tool_call_arguments_follow_schema() -> None:
    tool = {"type": "function", "function": {"name": "get_weather", "parameters": {
        "type": "object", "properties": {"city": {"type": "string"}, "days": {"type": "integer"},
                                         "unit": {"type": "string", "enum": ["c", "f"]},
                                         "hourly": {"type": "boolean"}}}}}
    plan = textgen.plan_tool_call(3, tool, 1000, "chatcmpl-tool-x")
    assert plan.tool_call is not None and plan.finish_reason == "tool_calls"
    args = json.loads(plan.tool_call.arguments)
    assert set(args) == {"city", "days", "unit", "hourly"}
    assert isinstance(args["city"], str) and isinstance(args["days"], int) and args["unit"] in ("c", "f")
    assert "".join(plan.tool_call.argument_pieces) == plan.tool_call.arguments
    assert plan.completion_tokens == tokens.count_text("get_weather") + tokens.count_text(plan.tool_call.arguments)
