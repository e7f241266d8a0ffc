"""Reasoning split and aliasing: whole text, streamed deltas, SSE events, bodies, requests."""

from __future__ import annotations

from itertools import zip_longest
from typing import Any

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from openai.types.chat import ChatCompletion, ChatCompletionChunk

from gateway.proxy.bodyedit import (
    strip_reasoning_from_request,
)
from gateway.proxy.reasoning import (
    StreamSplitter,
    drain_chat_events,
    rewrite_chat_body,
    rewrite_chat_event,
    split_text,
)

SPLIT = ("deepseek_r1", "think_tags")

# --- split_text ------------------------------------------------------------------------------

# vLLM's own deepseek_r1 parser test table (tests/reasoning/test_deepseekr1_reasoning_parser.py),
# non-streaming rows; empty reasoning is null here (vLLM: "") so stream and whole text agree.
R1_CASES = [
    (
        "This is a reasoning section</think>This is the rest",
        "This is a reasoning section",
        "This is the rest",
    ),
    ("This is a reasoning section</think>", "This is a reasoning section", None),
    ("This is content", "This is content", None),
    ("This\nThat</think>This is the rest\nThat", "This\nThat", "This is the rest\nThat"),
    ("</think>This is the rest", None, "This is the rest"),
    (
        "<think>This is a reasoning section</think>This is the rest",
        "This is a reasoning section",
        "This is the rest",
    ),
    ("<think>This is a reasoning section</think>", "This is a reasoning section", None),
    ("<think>This is a reasoning section", "This is a reasoning section", None),
    ("", None, None),
    (
        "\n<think>This is a reasoning section</think>\nThis is the rest",
        "This is a reasoning section",
        "\nThis is the rest",
    ),
    # R1 distills: no opening tag, blank line after the close; nothing is stripped (as vLLM).
    ("Let me think.\n</think>\n\nThe answer is 4.", "Let me think.\n", "\n\nThe answer is 4."),
    # Only the first close splits.
    ("a</think>b</think>c", "a", "b</think>c"),
]


@pytest.mark.parametrize(("text", "reasoning", "content"), R1_CASES)
def test_split_text_deepseek_r1_matches_vllm(text: str, reasoning: str | None, content: str | None) -> None:
    assert split_text(text, "deepseek_r1") == (reasoning, content)


@pytest.mark.parametrize(
    ("text", "reasoning", "content"),
    [
        ("<think>R</think>\n\nA", "R", "\n\nA"),
        ("<think>\nR\n</think>\n\nA", "\nR\n", "\n\nA"),
        ("plain answer", None, "plain answer"),
        ("R</think>A", None, "R</think>A"),  # no opening tag: all content in think_tags
        ("<think>cut off by max_tokens", "cut off by max_tokens", None),
        ("<think></think>A", None, "A"),
        ("  <think>R</think>A", "R", "A"),
        ("x<think>R</think>A", None, "x<think>R</think>A"),
        ("", None, ""),
    ],
)
def test_split_text_think_tags(text: str, reasoning: str | None, content: str | None) -> None:
    assert split_text(text, "think_tags") == (reasoning, content)


@pytest.mark.parametrize("mode", ["none", "passthrough"])
def test_split_text_other_modes_leave_text(mode: str) -> None:
    assert split_text("R</think>A", mode) == (None, "R</think>A")
    assert split_text(None, "deepseek_r1") == (None, None)


# --- StreamSplitter --------------------------------------------------------------------------


def run(splitter: StreamSplitter, deltas: list[str], index: int = 0) -> tuple[str, str]:
    pieces = [p for d in deltas for p in splitter.feed(d, index)] + splitter.finish(index)
    return (
        "".join(t for k, t in pieces if k == "reasoning"),
        "".join(t for k, t in pieces if k == "content"),
    )


def test_holds_back_only_a_possible_tag_prefix() -> None:
    s = StreamSplitter("deepseek_r1")
    assert s.feed("Let me think </") == [("reasoning", "Let me think ")]
    assert s.feed("thi") == []
    assert s.feed("nk>\n\nHi") == [("content", "\n\nHi")]
    assert s.feed(" there") == [("content", " there")]
    assert s.settled


def test_partial_tag_that_is_not_a_tag_is_released() -> None:
    s = StreamSplitter("deepseek_r1")
    assert s.feed("a </thi") == [("reasoning", "a ")]
    assert s.feed("s is </b>") == [("reasoning", "</this is </b>")]
    assert s.finish(0) == []


def test_close_tag_with_text_on_both_sides_in_one_delta() -> None:
    s = StreamSplitter("deepseek_r1")
    assert s.feed("step 2.\n</think>\n\nAnswer") == [("reasoning", "step 2.\n"), ("content", "\n\nAnswer")]


def test_open_tag_split_across_deltas() -> None:
    s = StreamSplitter("think_tags")
    assert s.feed("\n") == []
    assert s.feed("<th") == []
    assert s.feed("ink>\nhm") == [("reasoning", "\nhm")]
    assert s.feed("</think>ok") == [("content", "ok")]


def test_think_tags_without_open_tag_streams_content_at_once() -> None:
    s = StreamSplitter("think_tags")
    assert s.feed("Hello") == [("content", "Hello")]
    assert s.settled
    assert s.feed("</think>") == [("content", "</think>")]


def test_finish_flushes_held_text() -> None:
    s = StreamSplitter("deepseek_r1")
    assert s.feed("cut off at </thi") == [("reasoning", "cut off at ")]
    assert s.finish(0) == [("reasoning", "</thi")]
    t = StreamSplitter("think_tags")
    assert t.feed(" <thi") == []
    assert t.finish(0) == [("content", " <thi")]


def test_choices_are_independent() -> None:
    s = StreamSplitter("deepseek_r1", n=2)
    assert s.feed("a</", 0) == [("reasoning", "a")]
    assert s.feed("b</think>B", 1) == [("reasoning", "b"), ("content", "B")]
    assert not s.settled
    assert s.feed("think>A", 0) == [("content", "A")]
    assert s.settled


# Text made of the characters that matter, so tags and near-tags are common.
_ALPHABET = st.sampled_from(
    list("<>/thinkTHINK \n\t\u00e9\u4e2d\U0001f600ab") + ["<think>", "</think>", "</thi", "<th"]
)
_free_text = st.lists(_ALPHABET, max_size=40).map("".join)


@st.composite
def _output(draw: st.DrawFn) -> str:
    """Engine output shaped like a reasoning model's, or arbitrary text."""
    if draw(st.booleans()):
        return draw(_free_text)
    ws = draw(st.sampled_from(["", "\n", " \n"]))
    opening = draw(st.sampled_from(["", "<think>", "<think>\n"]))
    closing = draw(st.sampled_from(["", "</think>", "\n</think>\n\n"]))
    return ws + opening + draw(_free_text) + closing + draw(_free_text)


@st.composite
def _split(draw: st.DrawFn, text: str) -> list[str]:
    cuts = sorted(draw(st.sets(st.integers(0, len(text)), max_size=12)))
    bounds = [0, *cuts, len(text)]
    return [text[a:b] for a, b in zip(bounds, bounds[1:], strict=False)]


@settings(max_examples=300, deadline=None)
@given(data=st.data(), text=_output(), mode=st.sampled_from(SPLIT))
def test_stream_reassembles_to_whole_text_split(data: st.DataObject, text: str, mode: str) -> None:
    deltas = data.draw(_split(text))
    s = StreamSplitter(mode)
    pieces: list[tuple[str, str]] = []
    for d in deltas:
        pieces += s.feed(d)
        held = s._choices[0].held if 0 in s._choices else ""
        # Never more held back than a tag prefix (after leading whitespace at the start).
        assert held == "" or "</think>".startswith(held) or "<think>".startswith(held.lstrip())
    pieces += s.finish(0)
    reasoning, content = split_text(text, mode)
    assert "".join(t for k, t in pieces if k == "reasoning") == (reasoning or "")
    assert "".join(t for k, t in pieces if k == "content") == (content or "")
    # Reasoning never follows content.
    kinds = [k for k, _ in pieces]
    assert kinds == sorted(kinds, key=lambda k: k == "content")


# --- events ----------------------------------------------------------------------------------

ENVELOPE = b'{"id":"chatcmpl-1","object":"chat.completion.chunk","created":1700000000,"model":"r1",'


def chunk(index: int = 0, finish: str | None = None, usage: bool = False, **delta: Any) -> bytes:
    """A vLLM-style chunk (engine without a reasoning parser), framed as the proxy frames it."""
    choice = {"index": index, "delta": delta, "logprobs": None, "finish_reason": finish}
    if finish is not None:
        choice["stop_reason"] = None
    tail = b',"usage":null' if usage else b""
    return b"data: " + ENVELOPE + b'"choices":[' + orjson.dumps(choice) + b"]" + tail + b"}\n\n"


USAGE_CHUNK = (
    b"data: " + ENVELOPE + b'"choices":[],"usage":{"prompt_tokens":5,"total_tokens":12,"completion_tokens":7,'
    b'"completion_tokens_details":{"reasoning_tokens":4}}}\n\n'
)


def relay(events: list[bytes], mode: str, n: int = 1) -> list[bytes]:
    s = StreamSplitter(mode, n) if mode in SPLIT else None
    out = [r for e in events if (r := rewrite_chat_event(e, s, mode)) is not None]
    return out + ([d] if (d := drain_chat_events(s)) else [])


def reassemble(events: list[bytes]) -> dict[int, dict[str, str]]:
    """Per choice: concatenated reasoning, reasoning_content and content, via the SDK's parser."""
    got: dict[int, dict[str, str]] = {}
    for e in events:
        assert e.startswith(b"data: ") and e.endswith(b"\n\n")
        c = ChatCompletionChunk.model_validate(orjson.loads(e[6:]))
        for ch in c.choices:
            acc = got.setdefault(ch.index, {"reasoning": "", "reasoning_content": "", "content": ""})
            extra = ch.delta.model_extra or {}
            acc["reasoning"] += extra.get("reasoning") or ""
            acc["reasoning_content"] += extra.get("reasoning_content") or ""
            acc["content"] += ch.delta.content or ""
    return got


def stream_of(deltas: list[str], index: int = 0, finish_with_text: bool = False) -> list[bytes]:
    events = [chunk(index, role="assistant", content="")]
    body = deltas[:-1] if finish_with_text and deltas else deltas
    events += [chunk(index, content=d) for d in body]
    last = deltas[-1] if finish_with_text and deltas else ""
    events.append(chunk(index, finish="stop", content=last))
    return events


def test_r1_stream_events_parse_and_split() -> None:
    out = relay([*stream_of(["Hmm, 2+2", " is 4.\n</", "think>\n\n", "**4**"]), USAGE_CHUNK], "deepseek_r1")
    got = reassemble(out)[0]
    assert got == {
        "reasoning": "Hmm, 2+2 is 4.\n",
        "reasoning_content": "Hmm, 2+2 is 4.\n",
        "content": "\n\n**4**",
    }
    assert out[-1] is USAGE_CHUNK or out[-1] == USAGE_CHUNK
    assert orjson.loads(out[0][6:])["choices"][0]["delta"] == {"role": "assistant", "content": ""}


def test_fully_held_delta_is_dropped_but_finish_is_kept() -> None:
    s = StreamSplitter("deepseek_r1")
    assert rewrite_chat_event(chunk(content="think"), s, "deepseek_r1") is not None
    assert rewrite_chat_event(chunk(content="</thi"), s, "deepseek_r1") is None
    fin = rewrite_chat_event(chunk(finish="length", content=""), s, "deepseek_r1")
    assert fin is not None
    choice = orjson.loads(fin[6:])["choices"][0]
    assert choice["finish_reason"] == "length"
    assert choice["delta"]["reasoning"] == choice["delta"]["reasoning_content"] == "</thi"


def test_held_role_chunk_is_not_dropped() -> None:
    s = StreamSplitter("think_tags")
    out = rewrite_chat_event(chunk(role="assistant", content="<th"), s, "think_tags")
    assert out is not None and orjson.loads(out[6:])["choices"][0]["delta"] == {"role": "assistant"}
    out = rewrite_chat_event(chunk(content="ink>R</think>A"), s, "think_tags")
    assert out is not None
    assert orjson.loads(out[6:])["choices"][0]["delta"] == {
        "content": "A",
        "reasoning": "R",
        "reasoning_content": "R",
    }


def test_held_delta_with_logprobs_is_not_dropped() -> None:
    s = StreamSplitter("deepseek_r1")
    ev = chunk(content="</").replace(b'"logprobs":null', b'"logprobs":{"content":[]}')
    out = rewrite_chat_event(ev, s, "deepseek_r1")
    assert out is not None and orjson.loads(out[6:])["choices"][0]["delta"] == {}


def test_n2_interleaved_choices() -> None:
    a = stream_of(["<think>", "A1 </", "think>A2"], index=0)
    b = stream_of(["B1</think>", "B2"], index=1, finish_with_text=True)
    events = [x for pair in zip_longest(a, b) for x in pair if x is not None]
    got = reassemble(relay(events, "deepseek_r1", n=2))
    assert got[0]["reasoning"] == "A1 " and got[0]["content"] == "A2"
    assert got[1]["reasoning"] == got[1]["reasoning_content"] == "B1" and got[1]["content"] == "B2"


def test_split_mode_fast_path_after_split() -> None:
    s = StreamSplitter("deepseek_r1")
    rewrite_chat_event(chunk(content="r</think>c"), s, "deepseek_r1")
    ev = chunk(content="more content")
    assert rewrite_chat_event(ev, s, "deepseek_r1") is ev


@pytest.mark.parametrize("mode", ["none", "passthrough"])
def test_passthrough_fast_path_is_identity(mode: str) -> None:
    ev = chunk(content="x" * 150)
    assert rewrite_chat_event(ev, None, mode) is ev
    assert rewrite_chat_event(USAGE_CHUNK, None, mode) is USAGE_CHUNK
    done = b"data: [DONE]\n\n"
    assert rewrite_chat_event(done, None, mode) is done


@pytest.mark.parametrize(
    ("have", "add"), [("reasoning", "reasoning_content"), ("reasoning_content", "reasoning")]
)
@pytest.mark.parametrize("mode", ["none", "passthrough", "deepseek_r1"])
def test_engine_reasoning_field_is_aliased(have: str, add: str, mode: str) -> None:
    s = StreamSplitter(mode) if mode in SPLIT else None
    out = rewrite_chat_event(chunk(**{have: "thinking </think> x"}), s, mode)
    assert out is not None
    delta = orjson.loads(out[6:])["choices"][0]["delta"]
    assert delta[have] == delta[add] == "thinking </think> x"
    # With an engine parser, content is content even in a split mode.
    ev = chunk(content="A</think>B")
    assert rewrite_chat_event(ev, s, mode) is ev


def test_null_reasoning_field_is_left_alone() -> None:
    ev = chunk(content="hi", reasoning_content=None)
    assert rewrite_chat_event(ev, None, "passthrough") is ev


def test_event_framing_kept() -> None:
    s = StreamSplitter("deepseek_r1")
    ev = chunk(content="r</think>c").rstrip(b"\n")  # no terminator
    out = rewrite_chat_event(ev, s, "deepseek_r1")
    assert out is not None and out.startswith(b"data: {") and out.endswith(b"}")


def test_drain_for_stream_without_finish() -> None:
    s = StreamSplitter("deepseek_r1")
    rewrite_chat_event(chunk(content="abc</th"), s, "deepseek_r1")
    tail = drain_chat_events(s)
    assert tail.startswith(b"data: ") and tail.endswith(b"\n\n")
    c = ChatCompletionChunk.model_validate(orjson.loads(tail[6:]))
    assert c.model == "r1" and (c.choices[0].delta.model_extra or {})["reasoning"] == "</th"
    assert drain_chat_events(s) == b""
    assert drain_chat_events(None) == b""


@settings(max_examples=300, deadline=None)
@given(data=st.data(), texts=st.lists(_output(), min_size=1, max_size=2), mode=st.sampled_from(SPLIT))
def test_events_reassemble_to_whole_text_split(data: st.DataObject, texts: list[str], mode: str) -> None:
    streams = [stream_of(data.draw(_split(t)), i, data.draw(st.booleans())) for i, t in enumerate(texts)]
    # Interleave the choices' events in a random order that keeps each one's own order.
    events: list[bytes] = []
    while any(streams):
        live = [s for s in streams if s]
        events.append(live[data.draw(st.integers(0, len(live) - 1))].pop(0))
    out = relay(events, mode, n=len(texts))
    got = reassemble(out)
    for i, t in enumerate(texts):
        reasoning, content = split_text(t, mode)
        assert got[i]["reasoning"] == got[i]["reasoning_content"] == (reasoning or "")
        assert got[i]["content"] == (content or "")
    # Role and finish chunks all survive.
    parsed = [orjson.loads(e[6:]) for e in out]
    assert sum(1 for p in parsed for c in p["choices"] if c["delta"].get("role")) == len(texts)
    assert sum(1 for p in parsed for c in p["choices"] if c["finish_reason"]) == len(texts)


# --- non-stream bodies -----------------------------------------------------------------------


def body(message: dict[str, Any]) -> bytes:
    return orjson.dumps(
        {
            "id": "chatcmpl-1",
            "object": "chat.completion",
            "created": 1700000000,
            "model": "r1",
            "choices": [{"index": 0, "message": {"role": "assistant", **message}, "finish_reason": "stop"}],
            "usage": {"prompt_tokens": 3, "completion_tokens": 9, "total_tokens": 12},
        }
    )


@pytest.mark.parametrize("mode", SPLIT)
def test_body_split_and_sdk_reads_both_fields(mode: str) -> None:
    out = rewrite_chat_body(body({"content": "<think>R</think>\n\nA"}), mode)
    msg = ChatCompletion.model_validate(orjson.loads(out)).choices[0].message
    assert msg.content == "\n\nA"
    assert (msg.model_extra or {})["reasoning"] == (msg.model_extra or {})["reasoning_content"] == "R"
    assert orjson.loads(out)["usage"]["completion_tokens"] == 9


def test_body_identity_when_nothing_to_do() -> None:
    b = body({"content": "plain"})
    assert rewrite_chat_body(b, "passthrough") is b
    assert rewrite_chat_body(b, "think_tags") is b
    tool_only = body(
        {
            "content": None,
            "tool_calls": [{"id": "c", "type": "function", "function": {"name": "f", "arguments": "{}"}}],
        }
    )
    assert rewrite_chat_body(tool_only, "deepseek_r1") is tool_only
    assert rewrite_chat_body(b"not json", "deepseek_r1") == b"not json"


def test_body_engine_split_is_aliased_not_resplit() -> None:
    out = rewrite_chat_body(body({"content": "x</think>y", "reasoning": "R"}), "deepseek_r1")
    msg = orjson.loads(out)["choices"][0]["message"]
    assert msg == {"role": "assistant", "content": "x</think>y", "reasoning": "R", "reasoning_content": "R"}
    out = rewrite_chat_body(body({"content": "A", "reasoning_content": "R"}), "passthrough")
    assert orjson.loads(out)["choices"][0]["message"]["reasoning"] == "R"


def test_body_r1_cut_off_is_all_reasoning() -> None:
    msg = orjson.loads(rewrite_chat_body(body({"content": "still thinking"}), "deepseek_r1"))["choices"][0][
        "message"
    ]
    assert msg["content"] is None and msg["reasoning"] == "still thinking"


# --- requests --------------------------------------------------------------------------------


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


_ENV = b'{"id":"chatcmpl-t","object":"chat.completion.chunk","created":1,"model":"m","choices":['


TOOL_STREAM = [
    b"data: "
    + _ENV
    + b'{"index":0,"delta":{"role":"assistant","content":""},"logprobs":null,"finish_reason":null}]}\n\n',
    b"data: "
    + _ENV
    + b'{"index":0,"delta":{"tool_calls":[{"id":"chatcmpl-tool-1","type":"function","index":0,'
    b'"function":{"name":"get_weather"}}]},"logprobs":null,"finish_reason":null}]}\n\n',
    b"data: " + _ENV + b'{"index":0,"delta":{"tool_calls":[{"index":0,"function":{"arguments":"{\\"city\\": '
    b'\\"</think> Paris\\"}"}}]},"logprobs":null,"finish_reason":null}]}\n\n',
    b"data: " + _ENV + b'{"index":0,"delta":{"content":""},"logprobs":null,"finish_reason":"tool_calls",'
    b'"stop_reason":null}]}\n\n',
]


@pytest.mark.parametrize("mode", ["none", "passthrough", "deepseek_r1", "think_tags"])
def test_tool_call_events_are_byte_identical(mode: str) -> None:
    s = StreamSplitter(mode) if mode in ("deepseek_r1", "think_tags") else None
    for ev in TOOL_STREAM:
        assert rewrite_chat_event(ev, s, mode) is ev
        ChatCompletionChunk.model_validate(orjson.loads(ev[6:]))


@pytest.mark.parametrize("mode", ["passthrough", "none"])
def test_leaked_open_tag_is_dropped_from_engine_reasoning(mode: str) -> None:
    # vLLM 0.32 under load: `<think>` and the next token in one step leave the tag in the delta.
    ev = b'data: {"id":"c","choices":[{"index":0,"delta":{"reasoning":"<think>\\nLet me"},"finish_reason":null}]}\n\n'
    out = rewrite_chat_event(ev, None, mode)
    assert out is not None and out.endswith(b"\n\n")
    delta = orjson.loads(out[6:])["choices"][0]["delta"]
    assert delta == {"reasoning": "\nLet me", "reasoning_content": "\nLet me"}
    # a tag alone leaves empty reasoning; a tag later in the text is left alone
    alone = rewrite_chat_event(ev.replace(b"<think>\\nLet me", b"<think>"), None, mode)
    assert alone is not None and orjson.loads(alone[6:])["choices"][0]["delta"]["reasoning"] == ""
    later = ev.replace(b"<think>\\nLet me", b"x <think>")
    assert orjson.loads(rewrite_chat_event(later, None, mode)[6:])["choices"][0]["delta"]["reasoning"] == "x <think>"  # type: ignore[index]
    content = b'data: {"id":"c","choices":[{"index":0,"delta":{"content":"<think>hi"},"finish_reason":null}]}\n\n'
    assert rewrite_chat_event(content, None, mode) is content  # content is never touched here
