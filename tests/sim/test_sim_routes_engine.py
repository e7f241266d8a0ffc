"""The newer routes share the engine with chat: sleep-mode admission and aborts, the prefix cache."""

from __future__ import annotations

import json
import threading
from typing import Any

import httpx

from gateway import tokens
from gateway.sim.testing import SimProcess

DEV = {"VLLM_SERVER_DEV_MODE": "1"}
MSGS = [{"role": "user", "content": "hi"}]


def _in_thread(sim: SimProcess, path: str, body: Any, out: list[tuple[int, bytes]]) -> threading.Thread:
    t = threading.Thread(target=lambda: out.append(sim.request("POST", path, body, timeout=20)))
    t.start()
    return t


def test_requests_while_asleep_wait_for_the_wake_up() -> None:
    from tests.sim.test_sim_audio import wav

    with SimProcess(["--served-model-name", "m", "--ttft-ms", "0", "--itl-ms", "0", "--enable-sleep-mode",
                     "--transcription"], env=DEV) as sim:
        assert sim.request("POST", "/sleep")[0] == 200
        results: list[tuple[int, bytes]] = []
        threads = [_in_thread(sim, "/v1/responses", {"model": "m", "input": "x", "max_output_tokens": 4}, results),
                   _in_thread(sim, "/v1/messages", {"model": "m", "max_tokens": 4, "messages": MSGS}, results)]
        audio: list[httpx.Response] = []
        ta = threading.Thread(target=lambda: audio.append(httpx.post(
            f"{sim.base_url}/audio/transcriptions", files={"file": ("a.wav", wav(1.0))}, timeout=20)))
        ta.start()
        sim.wait_for(lambda m: m["vllm:num_requests_waiting"] == 3, timeout=5)
        assert not results and not audio  # held, not refused
        assert sim.request("POST", "/wake_up")[0] == 200
        for t in (*threads, ta):
            t.join(10)
        assert sorted(s for s, _ in results) == [200, 200] and audio[0].status_code == 200


def test_sleep_aborts_in_flight_messages_and_responses() -> None:
    with SimProcess(["--served-model-name", "m", "--ttft-ms", "0", "--itl-ms", "40", "--enable-sleep-mode"],
                    env=DEV) as sim:
        results: list[tuple[int, bytes]] = []
        # prompts whose natural lengths (197, 107 tokens) keep both running for seconds at 40 ms/token
        t = _in_thread(sim, "/v1/responses", {"model": "m", "input": "long story", "max_output_tokens": 150}, results)
        conn, resp = sim.open_stream("/v1/messages", {"model": "m", "max_tokens": 150, "stream": True,
                                                       "messages": [{"role": "user", "content": "keep going"}]})
        sim.wait_for(lambda m: m["vllm:num_requests_running"] == 2, timeout=5)
        assert b"message_start" in resp.readline()
        assert sim.request("POST", "/sleep?level=1")[0] == 200
        raw = resp.read().decode()
        conn.close()
        t.join(10)
        # the first frame's `event:` line was read above; take every frame's data line
        frames = [json.loads(line[6:]) for f in raw.split("\n\n") for line in f.split("\n")
                  if line.startswith("data: ")]
        delta = next(f for f in frames if f["type"] == "message_delta")
        sent = [f for f in frames if f["type"] == "content_block_delta"]
        assert delta["delta"] == {"stop_reason": None, "stop_sequence": None}  # abort maps to no reason
        assert delta["usage"]["output_tokens"] == len(sent) < 150 and frames[-1]["type"] == "message_stop"
        status, body = results[0]
        r = json.loads(body)
        text = r["output"][0]["content"][0]["text"] if r["output"] else ""
        assert status == 200 and r["usage"]["output_tokens"] == tokens.count_text(text) < 150
        m = sim.metrics()
        assert m['vllm:request_success_total{engine="0",model_name="m",finished_reason="abort"}'] == 2


def test_prefix_cache_hits_show_in_responses_usage_and_tokenize_ids_match() -> None:
    with SimProcess(["--served-model-name", "m", "--ttft-ms", "0", "--itl-ms", "0"]) as sim:
        long_input = "shared context " * 40
        body = {"model": "m", "input": long_input, "max_output_tokens": 5}
        first = json.loads(sim.request("POST", "/v1/responses", body)[1])
        second = json.loads(sim.request("POST", "/v1/responses", body)[1])
        n_in = first["usage"]["input_tokens"]
        assert first["usage"]["input_tokens_details"]["cached_tokens"] == 0
        cached = second["usage"]["input_tokens_details"]["cached_tokens"]
        assert 0 < cached < n_in and cached % 16 == 0  # whole blocks, never the full prompt
        details = second["usage"]["input_tokens_details"]
        assert details["cache_write_tokens"] == n_in // 16 * 16 - cached
        assert details["input_tokens_per_turn"] == [n_in] and details["cached_tokens_per_turn"] == [cached]
        assert first["usage"]["input_tokens_details"]["cache_write_tokens"] == n_in // 16 * 16
        status, raw = sim.request("POST", "/tokenize", {"messages": [{"role": "user", "content": long_input}]})
        tok = json.loads(raw)
        assert status == 200 and tok["count"] == n_in
        status, raw = sim.request("POST", "/detokenize", {"tokens": tok["tokens"]})
        prompt = json.loads(raw)["prompt"]
        assert status == 200 and prompt.startswith("<|im_start|>user\n" + long_input + "<|im_end|>")
