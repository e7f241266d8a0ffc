"""The per-backend prefix index: longest match, LRU cap, TTL ageing, calibration."""

from __future__ import annotations

from gateway.routing.prefix_index import MIN_BLOCKS, PrefixIndex


def seq(tag: int, n: int) -> list[int]:
    return [tag * 1000 + i for i in range(n)]


def test_longest_cached_prefix() -> None:
    idx = PrefixIndex(1000, ttl=60)
    a = seq(1, 10)
    idx.insert(a, now=0)
    assert idx.match(a, 1) == 10
    assert idx.match(a + [7, 8], 1) == 10
    assert idx.match(a[:4] + [99, 98], 1) == 4
    assert idx.match([5] + a, 1) == 0
    assert idx.match([], 1) == 0


def test_memory_cap_evicts_least_recent_tails_first() -> None:
    idx = PrefixIndex(MIN_BLOCKS * 2, ttl=60)
    old, new = seq(1, MIN_BLOCKS), seq(2, MIN_BLOCKS + 4)
    idx.insert(old, 0)
    idx.insert(new, 1)
    assert len(idx) == MIN_BLOCKS * 2
    # `old` lost its 4 LAST blocks (tails go first), so its prefix still matches partly.
    assert idx.match(old, 2) == MIN_BLOCKS - 4
    assert idx.match(new, 2) == MIN_BLOCKS + 4


def test_ttl_ages_blocks_out() -> None:
    idx = PrefixIndex(1000, ttl=10)
    a = seq(1, 5)
    idx.insert(a, 0)
    assert idx.match(a, 9.9) == 5
    assert idx.match(a, 10.1) == 0
    idx.insert(seq(2, 3), 20)  # inserting trims expired entries
    assert len(idx) == 3


def test_touching_a_prefix_refreshes_it() -> None:
    idx = PrefixIndex(MIN_BLOCKS * 2, ttl=60)
    shared = seq(1, 4)
    idx.insert(shared + seq(2, 8), 0)
    for i in range(3, 8):  # other conversations that start with the same shared blocks
        idx.insert(shared + seq(i, 8), i)
    assert idx.match(shared, 9) == 4  # the shared system prompt is never the one evicted


def test_calibration_shrinks_on_over_prediction_and_grows_back_slowly() -> None:
    idx = PrefixIndex(1000, ttl=60)
    for i in range(50):
        idx.insert(seq(i, 10), i)
    assert idx.cap == 1000 and len(idx) == 500
    assert idx.calibrate(predicted_blocks=10, actual_blocks=1, now=60)
    assert idx.cap == 400 and len(idx) == 400
    assert not idx.calibrate(predicted_blocks=10, actual_blocks=10, now=61)
    assert 400 < idx.cap < 420
    assert not idx.calibrate(predicted_blocks=0, actual_blocks=0, now=62)
    for _ in range(500):
        idx.calibrate(10, 10, 63)
    assert idx.cap == 1000  # never past the engine's capacity


def test_resize_to_the_engines_capacity() -> None:
    idx = PrefixIndex(1000, ttl=60)
    idx.insert(seq(1, 100), 0)
    idx.resize(50, 1)
    assert idx.cap == 50 and len(idx) == 50
    idx.resize(2000, 2)
    assert idx.cap == 2000
