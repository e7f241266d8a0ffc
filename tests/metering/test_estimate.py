"""Estimates of cut-short requests: counted from exactly what the client received.

Ground truth comes from the simulator's own planner (`gateway.sim.textgen`), whose
`completion_tokens` is what the simulated engine reports and counts.
"""

from __future__ import annotations

import orjson

from gateway import tokens
from gateway.metering import estimate
from gateway.sim import textgen
from tests.metering.ctxs import chunk, sse


def _delta_events(plans: list[textgen.ChoicePlan], reasoning_fields: tuple[str, ...] = ("reasoning",)) -> list[bytes]:
    """Interleaved per-step events, as an engine streams n choices."""
    out = [chunk([{"index": i, "delta": {"role": "assistant", "content": ""}}]) for i in range(len(plans))]
    for step in range(max(len(p.deltas) for p in plans)):
        for i, p in enumerate(plans):
            if step < len(p.deltas):
                kind, text = p.deltas[step][:2]
                delta = {"content": text} if kind == "content" else dict.fromkeys(reasoning_fields, text)
                out.append(chunk([{"index": i, "delta": delta, "finish_reason": None}]))
    out.append(b"data: [DONE]\n\n")
    return out


def test_content_stream_matches_the_engines_count() -> None:
    plan = textgen.plan_text(key=11, limit=1000, natural=57, stop=[])
    assert estimate.completion_tokens(_delta_events([plan])) == plan.completion_tokens == 57


def test_think_tags_split_over_events_count_as_the_engine_counts() -> None:
    for split in (True, False):
        plan = textgen.plan_text(key=5, limit=1000, natural=40, stop=[], reasoning="think-tags", think_split=split)
        assert estimate.completion_tokens(_delta_events([plan])) == plan.completion_tokens


def test_reasoning_in_both_fields_is_counted_once() -> None:
    plan = textgen.plan_text(key=3, limit=1000, natural=30, stop=[], reasoning="field")
    both = _delta_events([plan], ("reasoning", "reasoning_content"))
    assert estimate.completion_tokens(both) == plan.completion_tokens
    assert estimate.completion_tokens(_delta_events([plan], ("reasoning_content",))) == plan.completion_tokens


def test_n_choices_are_summed_and_cut_short_counts_only_what_was_sent() -> None:
    plans = [textgen.plan_text(key=k, limit=1000, natural=20 + k, stop=[]) for k in range(3)]
    events = _delta_events(plans)
    assert estimate.completion_tokens(events) == sum(p.completion_tokens for p in plans)
    # Cut after the 10th event: the role events (3) plus 7 single-token deltas.
    assert estimate.completion_tokens(events[:10]) == 7


def test_tool_call_deltas_count_name_and_arguments() -> None:
    tool = {"type": "function", "function": {"name": "get_weather", "parameters": {
        "type": "object", "properties": {"city": {"type": "string"}, "days": {"type": "integer"}}}}}
    plan = textgen.plan_tool_call(key=9, tool=tool, limit=1000, call_id="call_1")
    assert plan.tool_call is not None
    call = plan.tool_call
    events = [chunk([{"index": 0, "delta": {"role": "assistant", "tool_calls": [
        {"index": 0, "id": call.id, "type": "function", "function": {"name": call.name, "arguments": ""}}]}}])]
    for piece in call.argument_pieces:
        events.append(chunk([{"index": 0, "delta": {"tool_calls": [{"index": 0, "function": {"arguments": piece}}]}}]))
    assert estimate.completion_tokens(events) == plan.completion_tokens


def test_legacy_completions_text_and_non_stream_bodies() -> None:
    plan = textgen.plan_text(key=21, limit=1000, natural=33, stop=[])
    text = "".join(d[1] for d in plan.deltas)
    stream = [sse({"object": "text_completion", "choices": [{"index": 0, "text": d[1]}]}) for d in plan.deltas]
    assert estimate.completion_tokens(stream) == 33
    body = orjson.dumps({"choices": [{"index": 0, "message": {"role": "assistant", "content": text,
                                                              "reasoning_content": "let me think"}}]})
    assert estimate.completion_tokens([body]) == 33 + tokens.count_text("let me think")
    assert estimate.completion_tokens([orjson.dumps({"choices": [{"index": 0, "text": text}]})]) == 33


def test_events_split_inside_a_token_are_joined_before_counting() -> None:
    # " network" is one token; split across two events it must still count once.
    assert tokens.count_text(" network") == 1
    events = [chunk([{"index": 0, "delta": {"content": " net"}}]), chunk([{"index": 0, "delta": {"content": "work"}}])]
    assert estimate.completion_tokens(events) == 1


def test_noise_is_ignored() -> None:
    events = [b": keep-alive\n\n", b"data: not json\n\n", sse({"error": {"message": "boom"}}), b"data: [DONE]\n\n"]
    assert estimate.completion(events) == (False, 0)


def test_prompt_counts_match_the_simulator_rules() -> None:
    msgs = [{"role": "system", "content": "be brief"}, {"role": "user", "content": [{"type": "text", "text": "hi"}]}]
    tools = [{"type": "function", "function": {"name": "f", "parameters": {}}}]
    assert estimate.prompt_tokens("chat", {"messages": msgs, "tools": tools}) == tokens.count_chat_prompt(msgs, tools)
    assert estimate.prompt_tokens("completions", {"prompt": ["a b", "c"], "n": 3}) == tokens.count_prompt(["a b", "c"])
    assert estimate.prompt_tokens("embeddings", {"input": [[1, 2, 3], [4]]}) == 4
    assert estimate.prompt_tokens("chat", None) == 0


def test_usage_the_client_received_is_found() -> None:
    u = {"prompt_tokens": 5, "completion_tokens": 2, "total_tokens": 7}
    events = [chunk([{"index": 0, "delta": {"content": " a"}}], usage=None), chunk([], usage=u)]
    assert estimate.reported_usage(events) == u
    assert estimate.reported_usage(events[:1]) is None


def test_events_past_the_keep_limit_are_extrapolated() -> None:
    from gateway.metering import estimate as est

    ev = b'data: {"choices":[{"index":0,"delta":{"content":" the"}}]}\n\n'
    started, n = est.completion([ev] * 10, dropped=30)
    assert started and n == 40  # one token per event, kept or not


def test_context_keeps_delivered_bytes_bounded() -> None:
    from gateway.context import DELIVERED_KEEP_BYTES, RequestContext

    ctx = RequestContext(request_id="r", endpoint="chat")
    ev = b"x" * 1000
    for _ in range(DELIVERED_KEEP_BYTES // 1000 + 50):
        ctx.keep_delivered(ev)
    assert ctx.delivered_bytes <= DELIVERED_KEEP_BYTES + 1000
    assert ctx.delivered_dropped >= 49
