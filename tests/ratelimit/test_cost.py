"""Admission cost per route: prompt estimate plus the output a route can generate."""

from __future__ import annotations

from gateway.ratelimit.cost import admission_cost, rough_prompt_tokens

MSGS = [{"role": "user", "content": "x" * 400}]


def test_routes_that_generate_nothing_are_charged_their_prompt_only() -> None:
    assert admission_cost("tokenize", {"model": "m", "prompt": "y" * 40}) == 10
    assert admission_cost("detokenize", {"model": "m", "tokens": [1, 2]}) == 0
    assert admission_cost("rerank", {"query": "q" * 4, "documents": ["d" * 36]}) == 10
    assert admission_cost("score", {"text_1": "a" * 8, "text_2": ["b" * 32]}) == 10
    assert admission_cost("count_tokens", {"messages": MSGS}) == rough_prompt_tokens("chat", {"messages": MSGS})


def test_messages_and_responses_read_their_own_fields() -> None:
    chat = rough_prompt_tokens("chat", {"messages": MSGS})
    assert chat > 100
    assert admission_cost("messages", {"messages": MSGS, "max_tokens": 50}) == chat + 50
    assert admission_cost("responses", {"input": "z" * 400, "max_output_tokens": 20}) == 100 + 20
