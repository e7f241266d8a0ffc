"""Backend: routability and the speed estimates fed by finished requests."""

from __future__ import annotations

import pytest

from gateway.routing.backend import Backend


def test_observe_non_stream_does_not_invent_a_per_token_speed() -> None:
    b = Backend(id="b", pool="p", url="u", max_concurrency=1)
    b.observe(None, 2.0, 100)  # non-stream: 100 tokens in 2 s
    assert b.ewma_tpot == pytest.approx(0.02) and b.ewma_ttft is None
    b.observe(0.5, 1.5, 11)  # stream: 10 tokens after the first in 1 s
    assert b.ewma_tpot == pytest.approx(0.8 * 0.02 + 0.2 * 0.1) and b.ewma_ttft == 0.5


def test_a_short_non_stream_answer_does_not_rate_the_engine() -> None:
    # 2 tokens in 1 s is a prefill (or a queue) talking, not 0.5 s per token.
    b = Backend(id="b", pool="p", url="u", max_concurrency=1)
    b.observe(None, 1.0, 2)
    assert b.ewma_tpot is None
    b.observe(None, 0.32, 16)
    assert b.ewma_tpot == pytest.approx(0.02)


def test_balancing_view_shows_what_the_policies_compare() -> None:
    b = Backend(id="b", pool="p", url="u", max_concurrency=1, engine_running=3.0, engine_waiting=1.0)
    assert b.balancing_view() == {"engine_running": 3.0, "engine_waiting": 1.0, "ewma_ttft": None,
                                  "ewma_tpot": None, "ttft_age": None, "tpot_age": None}
    b.observe(0.25, 1.25, 11)
    view = b.balancing_view()
    assert view["ewma_ttft"] == 0.25 and view["ewma_tpot"] == pytest.approx(0.1)
    assert view["ttft_age"] is not None and 0.0 <= view["ttft_age"] < 1.0
