"""Streams metered with the engine's running usage (`continuous_usage_stats`).

A real simulator behind a real gateway: the gateway asks for running usage, the client
never sees it, and a stream the client cuts short is recorded with the engine's own
figures, not an estimate.
"""

from __future__ import annotations

from typing import Any

import httpx
import orjson

from gateway.sim.testing import SimProcess
from tests.gw import GatewayServer, auth_yaml, wait_until
from tests.metering.test_e2e_metering import CLIENT, _flush, _usage

SLOW = ["--served-model-name", "engine-chat", "--ttft-ms", "1", "--itl-ms", "20"]


def _gateway(tmp: Any, sim: SimProcess, continuous: bool) -> str:
    return auth_yaml() + f"""
store: "sqlite:///{tmp}/usage.db"
metering: {{flush_interval: 0.05}}
pools:
  chat: {{endpoints: [{sim.base_url}], continuous_usage: {str(continuous).lower()}}}
"""


def test_running_usage_is_hidden_and_meters_a_cut_stream(tmp_path: Any) -> None:
    with SimProcess(SLOW) as sim, GatewayServer(_gateway(tmp_path, sim, True)) as gw:
        url = gw.url + "/v1/completions"
        # a whole stream: not one usage member reaches the client
        with httpx.stream("POST", url, json={"model": "chat", "prompt": "hi", "max_tokens": 4, "stream": True},
                          headers=CLIENT, timeout=20) as r:
            raw = b"".join(r.iter_raw())
        events = [orjson.loads(line[6:]) for line in raw.split(b"\n") if line.startswith(b"data: {")]
        assert len(events) == 4 and all("usage" not in e for e in events)
        # a stream the client leaves after 3 chunks (the engine would go on for 200)
        with httpx.stream("POST", url, json={"model": "chat", "prompt": "hello", "max_tokens": 200, "stream": True},
                          headers=CLIENT, timeout=20) as r:
            got = 0
            for line in r.iter_lines():
                got += line.startswith("data: ")
                if got == 3:
                    break
        assert wait_until(lambda: sim.metrics()["vllm:num_requests_running"] == 0)
        _flush(gw, requests=2)
        row = _usage(gw.url)[0]
        m = sim.metrics()
        assert row["estimated_requests"] == 0  # the engine's own figures, both times
        assert row["prompt_tokens"] == m["vllm:prompt_tokens_total"]
        # the engine may generate a token after the last chunk the gateway read
        assert 0 <= m["vllm:generation_tokens_total"] - row["completion_tokens"] <= 1
        assert row["completion_tokens"] >= 4 + 3


def test_without_continuous_usage_a_cut_stream_is_estimated(tmp_path: Any) -> None:
    with SimProcess(SLOW) as sim, GatewayServer(_gateway(tmp_path, sim, False)) as gw:
        with httpx.stream("POST", gw.url + "/v1/completions", headers=CLIENT, timeout=20,
                          json={"model": "chat", "prompt": "hello", "max_tokens": 200, "stream": True}) as r:
            for line in r.iter_lines():
                if line.startswith("data: "):
                    break
        _flush(gw, requests=1)
        assert _usage(gw.url)[0]["estimated_requests"] == 1


def test_llamacpp_usage_on_the_last_completions_chunk_is_stripped_and_metered(tmp_path: Any) -> None:
    args = ["--served-model-name", "engine-chat", "--ttft-ms", "1", "--itl-ms", "1", "--dialect", "llamacpp"]
    with SimProcess(args) as sim:
        direct = sim.stream("/v1/completions", {"model": "engine-chat", "prompt": "hi", "max_tokens": 3, "stream": True})
        last = direct[-2]
        assert last["choices"][0]["text"] == "" and last["choices"][0]["finish_reason"] == "length"
        assert last["usage"]["completion_tokens"] == 3  # not asked for, sent anyway (llama-server)
        with GatewayServer(_gateway(tmp_path, sim, False)) as gw:
            for asked in (False, True):
                body: dict[str, Any] = {"model": "chat", "prompt": "hi", "max_tokens": 3, "stream": True}
                if asked:
                    body["stream_options"] = {"include_usage": True}
                with httpx.stream("POST", gw.url + "/v1/completions", json=body, headers=CLIENT, timeout=20) as r:
                    raw = b"".join(r.iter_raw())
                events = [orjson.loads(line[6:]) for line in raw.split(b"\n") if line.startswith(b"data: {")]
                assert [e["usage"]["completion_tokens"] for e in events if "usage" in e] == ([3] if asked else [])
                assert events[-1]["choices"][0]["finish_reason"] == "length"  # the rest of the chunk stays
            _flush(gw, requests=2)
            row = _usage(gw.url)[0]
            assert (row["completion_tokens"], row["estimated_requests"]) == (6, 0)
