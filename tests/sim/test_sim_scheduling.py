"""Continuous batching: slots, FIFO queue, timing, aborts on disconnect, and metrics."""

from __future__ import annotations

import json
import socket
import threading
import time
from collections.abc import Iterator

import pytest

from gateway import tokens
from gateway.sim.testing import SimProcess, iter_sse

MSGS = [{"role": "user", "content": "queue me"}]


@pytest.fixture(scope="module")
def sim2() -> Iterator[SimProcess]:
    """Two slots, slow enough to observe: TTFT 100 ms, ITL 10 ms."""
    with SimProcess(["--max-num-seqs", "2", "--ttft-ms", "100", "--itl-ms", "10"]) as sim:
        yield sim


def _gauges(sim: SimProcess) -> tuple[float, float]:
    m = sim.metrics()
    return m["vllm:num_requests_running"], m["vllm:num_requests_waiting"]


def _idle(sim: SimProcess) -> None:
    sim.wait_for(lambda m: m["vllm:num_requests_running"] == 0 and m["vllm:num_requests_waiting"] == 0)


def test_queueing_fifo_and_timing(sim2: SimProcess) -> None:
    _idle(sim2)
    results: dict[int, dict[str, float]] = {}

    def run(i: int) -> None:
        conn, resp = sim2.open_stream("/v1/chat/completions", {"model": "sim-model", "messages": MSGS,
                                                               "max_tokens": 20, "stream": True})
        try:
            first = None
            for _ev in iter_sse(resp):
                if first is None:
                    first = time.monotonic()
            results[i] = {"first": first or 0.0, "end": time.monotonic()}
        finally:
            conn.close()

    threads = []
    t0 = time.monotonic()
    for i in range(4):
        before = sim2.state()["requests_total"]
        th = threading.Thread(target=run, args=(i,))
        th.start()
        threads.append(th)
        while sim2.state()["requests_total"] == before:  # arrival order = FIFO order
            time.sleep(0.002)
    assert _gauges(sim2) == (2.0, 2.0)
    state = sim2.state()
    assert state["running"] == 2 and state["waiting"] == 2 and state["max_num_seqs"] == 2
    for th in threads:
        th.join(10)
    # 20 tokens: TTFT 100 ms + 19 * 10 ms = ~290 ms per request.
    assert results[0]["first"] - t0 >= 0.09
    first_end = min(results[0]["end"], results[1]["end"])
    for i in (2, 3):
        assert results[i]["first"] >= first_end + 0.09  # waited for a slot, then its own TTFT
    assert results[2]["first"] <= results[3]["first"] + 0.02
    _idle(sim2)
    m = sim2.metrics()
    assert m["vllm:time_to_first_token_seconds_count"] >= 4
    assert m["vllm:e2e_request_latency_seconds_count"] >= 4


def _open_raw(sim: SimProcess, body: dict[str, object]) -> socket.socket:
    data = json.dumps(body).encode()
    s = socket.create_connection(("127.0.0.1", sim.port), timeout=5)
    s.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
              b"Content-Length: %d\r\n\r\n%b" % (len(data), data))
    return s


def _read_until(s: socket.socket, needle: bytes, count: int) -> bytes:
    buf = b""
    while buf.count(needle) < count:
        chunk = s.recv(65536)
        assert chunk, "connection closed early"
        buf += chunk
    return buf


def test_stream_disconnect_frees_slot_fast(sim2: SimProcess) -> None:
    _idle(sim2)
    before = sim2.metrics()
    s = _open_raw(sim2, {"model": "sim-model", "messages": MSGS, "max_tokens": 150, "stream": True})
    _read_until(s, b'"content":" ', 5)  # five tokens arrived
    s.close()
    took = sim2.wait_for(lambda m: m["vllm:num_requests_running"] == 0, timeout=2, interval=0.002)
    assert took < 0.1
    after = sim2.metrics()
    key = 'vllm:request_success_total{engine="0",model_name="sim-model",finished_reason="abort"}'
    assert after[key] == before[key] + 1
    generated = after["vllm:generation_tokens_total"] - before["vllm:generation_tokens_total"]
    assert 5 <= generated <= 8  # tokens sent before the abort are counted, the rest never made
    assert sim2.state()["requests_aborted"] >= 1


def test_non_stream_disconnect_and_waiting_removal(sim2: SimProcess) -> None:
    _idle(sim2)
    body = {"model": "sim-model", "messages": MSGS, "max_tokens": 150}
    socks = [_open_raw(sim2, body) for _ in range(3)]
    sim2.wait_for(lambda m: m["vllm:num_requests_running"] == 2 and m["vllm:num_requests_waiting"] == 1)
    socks[2].close()  # the waiting one leaves the queue at once
    took = sim2.wait_for(lambda m: m["vllm:num_requests_waiting"] == 0, timeout=2, interval=0.002)
    assert took < 0.1 and _gauges(sim2)[0] == 2
    socks[0].close()  # a non-stream request in generation is aborted too
    took = sim2.wait_for(lambda m: m["vllm:num_requests_running"] == 1, timeout=2, interval=0.002)
    assert took < 0.1
    socks[1].close()
    _idle(sim2)


def test_metrics_counters_are_exact() -> None:
    with SimProcess(["--ttft-ms", "0", "--itl-ms", "0", "--served-model-name", "counted"]) as sim:
        m0 = sim.metrics()
        assert m0["vllm:prompt_tokens_total"] == 0 and m0["vllm:generation_tokens_total"] == 0
        for max_tokens in (5, 300):
            sim.request("POST", "/v1/chat/completions", {"model": "counted", "messages": MSGS,
                                                         "max_tokens": max_tokens})
        events = sim.stream("/v1/completions", {"model": "counted", "prompt": "abc", "max_tokens": 4,
                                                "stream": True})
        assert events[-1] == "[DONE]"
        status, raw = sim.request("POST", "/v1/chat/completions", {"model": "counted", "messages": MSGS,
                                                                   "max_tokens": 300})
        natural = json.loads(raw)["usage"]["completion_tokens"]
        m = sim.metrics()
        lb = 'engine="0",model_name="counted"'
        assert m["vllm:prompt_tokens_total"] == 3 * tokens.count_chat_prompt(MSGS) + tokens.count_text("abc")
        assert m["vllm:generation_tokens_total"] == 5 + 2 * natural + 4
        assert m[f'vllm:request_success_total{{{lb},finished_reason="length"}}'] == 2
        assert m[f'vllm:request_success_total{{{lb},finished_reason="stop"}}'] == 2
        assert m["vllm:e2e_request_latency_seconds_count"] == 4
        assert m[f'vllm:time_to_first_token_seconds_bucket{{{lb},le="+Inf"}}'] == 4
        text = sim.request("GET", "/metrics")[1].decode()
        assert "# TYPE vllm:num_requests_running gauge" in text and "# TYPE vllm:prompt_tokens_total counter" in text
        assert "# TYPE vllm:time_to_first_token_seconds histogram" in text
        assert m["vllm:kv_cache_usage_perc"] == 0.0


def test_batch_slowdown_and_prefill_cost() -> None:
    args = ["--max-num-seqs", "2", "--ttft-ms", "0", "--itl-ms", "20", "--batch-slowdown", "3",
            "--prefill-ms-per-token", "1"]
    with SimProcess(args) as sim:
        prompt = [{"role": "user", "content": " the" * 100}]
        p = tokens.count_chat_prompt(prompt)
        t = time.monotonic()
        sim.request("POST", "/v1/chat/completions", {"model": "sim-model", "messages": prompt, "max_tokens": 1})
        assert time.monotonic() - t >= p / 1000.0  # prefill: 1 ms per prompt token
        # Alone, occupancy 1/2 -> factor 2: 11 tokens = 10 ITLs = ~400 ms (not 200, not 600).
        t = time.monotonic()
        sim.request("POST", "/v1/chat/completions", {"model": "sim-model", "messages": MSGS, "max_tokens": 11})
        assert 0.39 <= time.monotonic() - t < 0.55


def test_prefills_queue_behind_each_other() -> None:
    # Two different 400-ish-token prompts at 2 ms per token, admitted together: the engine
    # prefills one, then the other, so the later first token comes after both prefills
    # (as on vLLM), not after one. Read from the sim's own TTFT histogram, not wall clock.
    args = ["--max-num-seqs", "4", "--ttft-ms", "0", "--itl-ms", "0", "--prefill-ms-per-token", "2"]
    with SimProcess(args) as sim:
        prompts = [[{"role": "user", "content": w * 400}] for w in (" the", " and")]
        one = 2 * tokens.count_chat_prompt(prompts[0]) / 1000.0

        def ask(p: list[dict[str, str]]) -> None:
            sim.request("POST", "/v1/chat/completions", {"model": "sim-model", "messages": p, "max_tokens": 1})

        threads = [threading.Thread(target=ask, args=(p,)) for p in prompts]
        for t in threads:
            t.start()
        for t in threads:
            t.join(10)
        ttft_sum = sim.metrics()["vllm:time_to_first_token_seconds_sum"]
        assert ttft_sum >= 3 * one * 0.95  # one prefill alone + one waiting for it (not 2x one)
        assert ttft_sum < 3 * one + 0.3


def test_header_timing_overrides(sim2: SimProcess) -> None:
    t = time.monotonic()
    status, _ = sim2.request("POST", "/v1/chat/completions", {"model": "sim-model", "messages": MSGS,
                                                              "max_tokens": 50},
                             headers={"x-sim-ttft-ms": "0", "x-sim-itl-ms": "0"})
    assert status == 200 and time.monotonic() - t < 0.09
