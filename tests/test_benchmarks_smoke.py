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


def test_misbehaving_clients_probes(sim: SimProcess) -> None:
    """The robustness probes themselves: they open, count and parse, bounded in time."""
    from benchmarks import robust

    target = ("127.0.0.1", sim.port)
    answers = {case: asyncio.run(robust.malformed(target, raw, wait=2.0)) for case, raw in robust.MALFORMED.items()}
    # The engine's HTTP layer answers every malformed request with a status line, so the
    # probe's parsing is what is checked here, not the engine.
    assert all(a.status is not None and 400 <= a.status < 500 for a in answers.values()), answers
    normal = loadgen.build_request(target, "/v1/chat/completions",
                                   workload.chat_body("bench", workload.messages_for(4), 4))
    t = asyncio.run(robust.timed_requests(target, normal, 2, 0.3, 2.0))
    assert t.ok > 0 and not t.failed and len(t.latencies) == t.ok


def test_openai_error_shape() -> None:
    from benchmarks.robust import openai_shaped

    assert openai_shaped(b'{"error": {"message": "m", "type": "t", "param": null, "code": null}}')
    assert not openai_shaped(b'{"error": "Unauthorized"}')
    assert not openai_shaped(b"Invalid HTTP request received.")


def test_peer_ratios_are_per_repetition() -> None:
    """Ratios to the baseline pair points of the same repetition (not medians of each side)."""
    from benchmarks import report_peers

    def pt(via: str, rep: int, cpu: float, p50: float) -> dict[str, object]:
        return {"mode": "non-stream", "concurrency": 32 if cpu else 1, "via": via, "rep": rep,
                "server_cpu_us": cpu or None, "lat_p50_ms": p50}

    pe = {"baseline": "vllm-router", "points": [
        pt("vllm-router", 0, 100.0, 0), pt("gateway", 0, 300.0, 0),
        pt("vllm-router", 1, 200.0, 0), pt("gateway", 1, 200.0, 0),
        pt("direct", 0, 0, 1.0), pt("gateway", 0, 0, 1.5), pt("vllm-router", 0, 0, 1.2)]}
    r = report_peers.cpu_ratio(pe, "non-stream", 32)
    assert (r["min"], r["max"], r["n"]) == (1.0, 3.0, 2)
    gap = report_peers.added_p50_gap(pe, "non-stream")
    assert abs(gap["med"] - 0.3) < 1e-9


def test_slowloris_probe_tells_closing_from_holding_servers() -> None:
    from benchmarks import robust

    async def run(close_after: float | None) -> robust.Held:
        done: list[asyncio.Future[None]] = []

        async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            finished = asyncio.get_running_loop().create_future()
            done.append(finished)
            try:
                await reader.read(100)
                if close_after is not None:
                    await asyncio.sleep(close_after)
                    writer.write(b"HTTP/1.1 408 Request Timeout\r\n\r\n")
                else:
                    await reader.read()  # until the client hangs up
            finally:
                writer.close()
                await writer.wait_closed()
                finished.set_result(None)

        server = await asyncio.start_server(handle, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        try:
            return await robust.slowloris(("127.0.0.1", port), b"POST / HTTP/1.1\r\nHost: x", 3, 0.5)
        finally:
            server.close()
            await asyncio.wait_for(asyncio.gather(*done), 5.0)
            await server.wait_closed()

    closing = asyncio.run(run(0.05))
    assert (closing.opened, closing.closed) == (3, 3)
    assert closing.answers == {"HTTP/1.1 408 Request Timeout": 3}
    assert all(0.04 <= t < 0.5 for t in closing.close_after_s)
    holding = asyncio.run(run(None))
    assert (holding.opened, holding.closed) == (3, 0)
