"""The simulated-time benchmark of issue #15 (benchmarks/cachesim): its engine model and
workloads agree with the simulator's prefix cache, and runs are deterministic."""

from __future__ import annotations

import asyncio

import pytest

from benchmarks.cachesim.engine import Engine, EngineSpec, Seq
from benchmarks.cachesim.run import Sim, simulate, summarize
from benchmarks.cachesim.workload import BLOCK, sessions
from gateway.sim.prefix_cache import KvCache, render_chat


@pytest.mark.parametrize("workload", ["chat", "agent", "skew"])
def test_incremental_rendering_is_the_simulators(workload: str) -> None:
    kv = KvCache(num_blocks=10, block_size=BLOCK)
    for s in sessions(workload, 2.0, 20.0, seed=1)[:3]:
        for t, turn in enumerate(s.turns):
            ids = render_chat(turn.body["messages"], turn.body.get("tools"))
            assert turn.prompt_len == len(ids)
            assert s.prompt_hashes(t) == kv.block_hashes(ids)
        if len(s.turns) > 1:  # a turn's prompt + answer + EOS opens the next turn's prompt
            nxt = s.prompt_hashes(1)
            assert s.output_hashes(0) == nxt[len(s.prompt_hashes(0)): len(s.prompt_hashes(0)) + len(s.output_hashes(0))]


def _run_one(e: Engine, sim: Sim, prompt: int, out: int, hashes: list[int]) -> tuple[float, int, float]:
    got: dict[str, float] = {}

    def first(now: float, cached: int) -> None:
        got["first"], got["cached"] = now, cached

    def done(now: float) -> None:
        got["done"] = now

    e.submit(Seq(prompt, out, hashes, [], first, done), sim.now)
    while sim.events:
        t, _, fn = sim.events.pop(0)
        sim.now = t
        fn()
    return got["first"], int(got["cached"]), got["done"]


def test_engine_charges_prefill_for_uncached_tokens_only() -> None:
    spec = EngineSpec(max_batched_tokens=2048, step_base_s=0.01, kv_read_s_per_token=0.0, prefill_s_per_token=0.001)
    sim = Sim()
    e = Engine(spec, sim.at)
    hashes = list(range(1, 4096 // BLOCK + 1))  # any distinct chain
    first, cached, done = _run_one(e, sim, 4096, 5, hashes)
    # 4096 prompt tokens in 2 steps of 2048: 2 x (10 ms + 2.048 s); then 4 decode steps.
    assert cached == 0 and first == pytest.approx(2 * (0.01 + 2.048))
    assert done - first == pytest.approx(4 * 0.01)
    t0 = sim.now
    first, cached, _ = _run_one(e, sim, 4096, 5, hashes)
    assert cached == 4096 - BLOCK  # all but the last block (the last token is always computed)
    assert first - t0 == pytest.approx(0.01 + 0.001 * BLOCK)
    assert e.context_tokens == 0 and e.running == 0


def test_runs_are_deterministic_and_locality_raises_the_hit_rate() -> None:
    sess = sessions("chat", 4.0, 60.0, seed=2)
    spec = EngineSpec(kv_tokens=60_000)

    def run(policy: str) -> dict[str, object]:
        return summarize(asyncio.run(simulate(sess, policy, 1, spec, 4, seed=3, measure_from=0.0)), 4)

    a, b = run("cache_aware"), run("cache_aware")
    assert a == b
    sa = run("speed_aware")
    assert a["n"] == sa["n"] > 0
    assert a["hit_rate"] > sa["hit_rate"]  # type: ignore[operator]
