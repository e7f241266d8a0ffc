"""Usage records built from finished request contexts."""

from __future__ import annotations

from gateway import tokens
from gateway.metering.record import UsageRecord, from_context
from tests.metering.ctxs import chunk, ctx, usage


def test_engine_usage_is_taken_as_is() -> None:
    rec = from_context(ctx(usage=usage(12, 30), user="u1", stream=True, first_byte_at=None))
    assert (rec.prompt_tokens, rec.completion_tokens, rec.total_tokens) == (12, 30, 42)
    assert (rec.key, rec.pool, rec.model, rec.backend, rec.user) == ("alice", "chat", "chat", "chat/b0", "u1")
    assert rec.estimated is False and rec.estimate_done and rec.stream is True


def test_cut_short_stream_is_estimated_lazily() -> None:
    msgs = [{"role": "user", "content": "tell me a story"}]
    c = ctx(body={"model": "chat", "messages": msgs}, stream=True,
            delivered=[chunk([{"index": 0, "delta": {"content": " once upon"}}])], error="client disconnected")
    rec = from_context(c, lazy=True)
    assert rec.estimated and not rec.estimate_done and rec.total_tokens == 0
    rec.finish_estimate()
    assert rec.prompt_tokens == tokens.count_chat_prompt(msgs)
    assert rec.completion_tokens == tokens.count_text(" once upon")
    assert rec.total_tokens == rec.prompt_tokens + rec.completion_tokens and rec.estimated
    assert "_pending" not in rec.to_dict() and UsageRecord.from_dict(rec.to_dict()) == rec


def test_not_dispatched_costs_nothing_and_is_not_an_estimate() -> None:
    rec = from_context(ctx(status=429, dispatched=False))
    assert rec.total_tokens == 0 and not rec.estimated and rec.backend is None


def test_dispatched_without_output_counts_no_tokens_but_is_flagged() -> None:
    rec = from_context(ctx(status=502, stream=True))
    assert rec.total_tokens == 0 and rec.estimated


def test_usage_chunk_the_client_received_wins_over_an_estimate() -> None:
    events = [chunk([{"index": 0, "delta": {"content": " x"}}]), chunk([], usage=usage(3, 1))]
    rec = from_context(ctx(stream=True, delivered=events))
    assert (rec.total_tokens, rec.estimated) == (4, False)


def _typed(event: str, obj: dict) -> bytes:
    import orjson

    return f"event: {event}\ndata: ".encode() + orjson.dumps(obj) + b"\n\n"


def test_cut_messages_stream_keeps_the_engines_prompt_and_estimates_the_output() -> None:
    delivered = [
        _typed("message_start", {"type": "message_start", "message": {"usage": {"input_tokens": 21}}}),
        _typed("content_block_delta", {"type": "content_block_delta", "delta": {"type": "thinking_delta",
                                                                                 "thinking": " deep"}}),
        _typed("content_block_delta", {"type": "content_block_delta", "delta": {"type": "text_delta",
                                                                                 "text": " sea waves"}}),
    ]
    c = ctx(endpoint="messages", stream=True, delivered=delivered, usage=usage(21, 0), usage_needs_end=True,
            completed=False)
    rec = from_context(c)
    assert rec.estimated and rec.prompt_tokens == 21
    assert rec.completion_tokens == tokens.count_text(" deep") + tokens.count_text(" sea waves")
    # The same stream, completed: message_delta's usage is exact.
    c = ctx(endpoint="messages", stream=True, delivered=delivered, usage=usage(21, 5), usage_needs_end=True,
            completed=True)
    assert (from_context(c).completion_tokens, from_context(c).estimated) == (5, False)


def test_cut_responses_stream_is_estimated_from_its_text_deltas() -> None:
    delivered = [_typed("response.output_text.delta", {"type": "response.output_text.delta", "delta": " hello"})]
    rec = from_context(ctx(endpoint="responses", stream=True, delivered=delivered, body={"input": "say hi"}))
    assert rec.estimated and rec.prompt_tokens == tokens.count_text("say hi")
    assert rec.completion_tokens == tokens.count_text(" hello")


def test_audio_seconds_engine_figure_first_then_header_only_for_started_answers() -> None:
    def asr(**kw: object) -> UsageRecord:
        c = ctx(endpoint="transcriptions", pool_name="asr", audio_upload=True, **kw)  # type: ignore[arg-type]
        if c.status < 400:
            c.first_byte_at = c.started + 0.1
        return from_context(c)

    engine = {**usage(0, 0), "audio_seconds": 4}
    assert asr(usage=engine, audio_seconds=2.2).audio_seconds == 4  # the engine's own figure wins
    assert asr(usage=usage(5, 7), audio_seconds=2.2).audio_seconds == 3  # a stream: the header, rounded up
    assert asr(usage=usage(5, 7), audio_seconds=None).audio_seconds == 0  # no duration in the header
    assert asr(usage=engine, audio_seconds=2.2, status=400).audio_seconds == 0  # refused: not transcribed
    chat = ctx(usage=usage(1, 1), audio_seconds=9.0)  # not an upload: never billed audio
    chat.first_byte_at = chat.started
    assert from_context(chat).audio_seconds == 0
