"""Keeps the benchmark harness from rotting: its load generator against one simulated engine.

About a second of load; it checks counts and SSE framing, never timings.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator

import pytest

from benchmarks import loadgen, workload
from benchmarks.measure import Setup, point
from gateway.sim.testing import SimProcess


@pytest.fixture(scope="module")
def sim() -> Iterator[SimProcess]:
    with SimProcess(["--served-model-name", "bench", "--ttft-ms", "0", "--itl-ms", "1", "--max-num-seqs", "64"]) as s:
        yield s


def test_closed_loop_stream_and_non_stream(sim: SimProcess) -> None:
    target = ("127.0.0.1", sim.port)
    msgs = workload.messages_for(16)
    for stream in (False, True):
        body = workload.chat_body("bench", msgs, 16, stream=stream)
        r = asyncio.run(point([target], lambda t, b=body: loadgen.build_request(t, "/v1/chat/completions", b),
                              4, stream, Setup(window=0.4, warmup=0.1, reps=1), client_pids=[sim.pid]))
        assert r["completed"] > 0 and r["errors"] == 0, r["error_examples"]
        # role, 16 tokens, finish, usage, [DONE]: the prompt really yields max_tokens tokens
        assert r["events_per_req"] == (20 if stream else 0)
        assert r["lat_p50_ms"] > 0 and r["client_cpu_us"] >= 0


def test_open_loop_and_exact_output_length(sim: SimProcess) -> None:
    target = ("127.0.0.1", sim.port)
    jobs = workload.job_mix(6, seed=1, model="bench")
    arrivals = workload.poisson_arrivals(len(jobs), 50.0, seed=1)

    async def run() -> list[loadgen.Sample | None]:
        pool = loadgen.ConnPool()
        try:
            return await loadgen.open_loop(
                arrivals, lambda i: pool.request(target, loadgen.build_request(target, "/v1/chat/completions",
                                                                              jobs[i][2])), deadline=10.0)
        finally:
            pool.close()

    samples = asyncio.run(run())
    for (_, tokens, _), s in zip(jobs, samples, strict=True):
        assert s is not None and s.ok and s.done
        assert s.events == tokens + 4  # one event per generated token: the length is exact


def test_percentiles() -> None:
    assert loadgen.percentile([3.0, 1.0, 2.0], 50) == 2.0
    assert loadgen.percentile([1.0, 2.0], 100) == 2.0
    assert loadgen.percentile([], 50) != loadgen.percentile([], 50)  # nan
