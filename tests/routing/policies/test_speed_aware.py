"""The speed-aware balancer: a pure function of backend stats, tested without HTTP."""

from __future__ import annotations

from collections import Counter

import pytest

from gateway.routing.backend import Backend
from gateway.routing.policies import make_balancer
from gateway.routing.policies.speed_aware import (
    REFERENCE_TOKENS,
    SPEED_HALF_LIFE_S,
    aged,
    engine_capacity,
    expected_seconds,
)


def backends(*tpots: float | None, max_concurrency: int = 64) -> list[Backend]:
    out = []
    for i, tpot in enumerate(tpots):
        b = Backend(id=f"b{i}", pool="p", url=f"http://127.0.0.1:{9000 + i}/v1", max_concurrency=max_concurrency)
        if tpot is not None:
            b.ewma_tpot, b.ewma_ttft = tpot, 2 * tpot
        out.append(b)
    return out


def test_idle_pool_goes_to_the_fastest() -> None:
    bs = backends(0.040, 0.010, 0.025)
    sa = make_balancer("speed_aware", seed=1)
    assert {sa.choose(bs).id for _ in range(20)} == {"b1"}


def test_unknown_batch_size_is_shortest_expected_delay() -> None:
    # 4x faster with 3 in flight vs 4x slower and idle: (3+1)*1 == (0+1)*4 -> tie; one more tips it.
    fast, slow = backends(0.010, 0.040)
    fast.outstanding = 3
    assert expected_seconds(fast, None, None) == pytest.approx(expected_seconds(slow, None, None))
    fast.outstanding = 4
    assert make_balancer("speed_aware", seed=0).choose([fast, slow]) is slow


def test_known_batch_size_fills_free_slots_of_the_fast_engine_first() -> None:
    fast, slow = backends(0.010, 0.040)
    fast.engine_capacity = slow.engine_capacity = 8
    sa = make_balancer("speed_aware", seed=0)
    fast.outstanding = 7  # one free slot: no wait, still 4x faster than the idle slow engine
    assert sa.choose([fast, slow]) is fast
    # Past its batch the fast engine queues: each batch-worth ahead costs one service time.
    fast.outstanding = 8 + 8 * 3
    assert sa.choose([fast, slow]) is slow
    fast.outstanding = 8 + 8 * 3 - 2
    assert sa.choose([fast, slow]) is fast


def test_unknown_batch_size_borrows_the_smallest_known() -> None:
    # Only the fast engine has queued so far, so only its batch size was learned: the idle
    # slow engine must not be costed as a batch of 1 (8x dearer per queued request).
    fast, slow = backends(0.010, 0.040)
    fast.engine_capacity = 8
    fast.outstanding, slow.outstanding = 7, 7
    assert make_balancer("speed_aware", seed=0).choose([fast, slow]) is fast
    assert expected_seconds(slow, None, None, 8) == pytest.approx(REFERENCE_TOKENS * 0.040)


def test_engine_queue_counts_traffic_that_bypassed_the_gateway() -> None:
    a, b = backends(0.020, 0.020)
    a.engine_running, a.engine_waiting = 8.0, 5.0  # someone else's requests
    assert make_balancer("speed_aware", seed=0).choose([a, b]) is b
    # Our own in-flight requests already show up in the engine's gauges: no double count.
    a.engine_running, a.engine_waiting = 3.0, 0.0
    a.outstanding = 3
    assert expected_seconds(a, None, None) == pytest.approx(4 * REFERENCE_TOKENS * 0.020)


def test_unobserved_backend_borrows_the_best_known_speed() -> None:
    known, new = backends(0.030, None)
    known.outstanding = 1
    # The new backend is assumed as fast as the best one we know: it gets tried.
    assert make_balancer("speed_aware", seed=0).choose([known, new]) is new


def test_nothing_observed_is_least_outstanding_with_random_ties() -> None:
    bs = backends(None, None, None)
    bs[0].outstanding, bs[1].outstanding, bs[2].outstanding = 2, 1, 1
    picks = Counter(make_balancer("speed_aware", seed=s).choose(bs).id for s in range(40))
    assert set(picks) == {"b1", "b2"}


def test_non_stream_observations_fall_back_to_ttft() -> None:
    # Non-stream requests report TTFT = the whole generation and a near-zero TPOT.
    fast, slow = backends(None, None)
    fast.ewma_ttft, fast.ewma_tpot = 0.6, 2e-6
    slow.ewma_ttft, slow.ewma_tpot = 2.4, 2e-6
    assert make_balancer("speed_aware", seed=0).choose([fast, slow]) is fast
    assert expected_seconds(slow, None, None) == pytest.approx(2.4)


@pytest.mark.parametrize("value", [None, 0, -3, 2])
def test_engine_capacity_ignores_nonsense(value: int | None) -> None:
    (b,) = backends(0.01)
    b.engine_capacity = value
    assert engine_capacity(b) == (2 if value == 2 else None)


def test_spreads_by_speed_under_sustained_load() -> None:
    # Dispatch 40 requests without completions: shares follow speed, roughly 1/tpot.
    bs = backends(0.010, 0.020, 0.040)
    sa = make_balancer("speed_aware", seed=0)
    for _ in range(70):
        sa.choose(bs).outstanding += 1
    counts = [b.outstanding for b in bs]
    assert counts[0] > counts[1] > counts[2] > 0
    assert counts[0] == pytest.approx(2 * counts[1], abs=2) and counts[1] == pytest.approx(2 * counts[2], abs=2)


def test_a_stale_estimate_ages_toward_the_freshest() -> None:
    # The idle replica was last measured (slow) just now, with its neighbour saturating
    # the shared cores; the busy one was measured fast a minute ago, when all was quiet,
    # and has 7 requests from elsewhere. Fresh, the 10x gap would outweigh the queue.
    busy, idle = backends(0.010, 0.100)
    busy.engine_running = 7.0
    sa = make_balancer("speed_aware", seed=0)
    assert sa.choose([busy, idle]) is busy
    busy.ttft_observed_at -= 4 * SPEED_HALF_LIFE_S
    busy.tpot_observed_at -= 4 * SPEED_HALF_LIFE_S
    assert sa.choose([busy, idle]) is idle
    # Both equally stale: neither is the fresher witness, the measured gap stands.
    idle.ttft_observed_at, idle.tpot_observed_at = busy.ttft_observed_at, busy.tpot_observed_at
    assert sa.choose([busy, idle]) is busy


def test_ageing_weights_halve_every_half_life() -> None:
    assert aged(0.010, 0.100, 0.0) == 0.010
    assert aged(0.010, 0.100, SPEED_HALF_LIFE_S) == pytest.approx(0.055)
    assert aged(0.010, 0.100, 10 * SPEED_HALF_LIFE_S) == pytest.approx(0.100, rel=1e-3)
    assert aged(None, 0.100, 60.0) is None and aged(0.010, None, 60.0) == 0.010


def test_observing_refreshes_only_the_estimate_it_teaches() -> None:
    (b,) = backends(None)
    b.ttft_observed_at = b.tpot_observed_at = 0.0
    b.observe(ttft=0.1, duration=0.5, output_tokens=5)
    assert b.ttft_observed_at > 0.0 and b.tpot_observed_at > 0.0 and b.ewma_tpot == pytest.approx(0.1)
    b.ttft_observed_at = b.tpot_observed_at = 0.0
    b.observe(ttft=None, duration=0.5, output_tokens=2)  # too short to teach anything
    assert b.ttft_observed_at == 0.0 and b.tpot_observed_at == 0.0
    b.observe(ttft=None, duration=3.2, output_tokens=32)  # non-stream: a rate, no TTFT
    assert b.ttft_observed_at == 0.0 and b.tpot_observed_at > 0.0
    b.tpot_observed_at = 0.0
    b.observe(ttft=0.2, duration=0.0, output_tokens=40)  # held back by its client: TTFT only
    assert b.ttft_observed_at > 0.0 and b.tpot_observed_at == 0.0


def test_a_stale_ttft_is_not_refreshed_by_a_rate() -> None:
    # A's TTFT is old (streams long ago) and it now serves only non-stream answers, which
    # refresh its rate; B's TTFT is younger than A's and must not age toward A's.
    a, b = backends(0.010, 0.010)
    a.ewma_ttft, b.ewma_ttft = 5.0, 0.1
    a.ttft_observed_at -= 600.0
    b.ttft_observed_at -= 60.0
    a.observe(ttft=None, duration=0.32, output_tokens=32)
    assert a.ttft_observed_at < b.ttft_observed_at  # still the older TTFT
    # So B's TTFT is the freshest and A's ages toward it, not the other way round.
    a_ttft = aged(a.ewma_ttft, b.ewma_ttft, b.ttft_observed_at - a.ttft_observed_at)
    assert a_ttft == pytest.approx(0.1, abs=0.01)
