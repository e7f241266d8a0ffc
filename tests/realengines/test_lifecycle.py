"""What real engines do under the gateway over time: disconnects, kills, balancing, reload.

The engines' own /metrics (on the ports /admin/backends reports) are the witnesses.
"""

from __future__ import annotations

import os
import signal
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import httpx
import pytest
from openai import APIError, OpenAI

from .conftest import CHAT_POOLS, LLAMA_CHAT, LLAMA_REPLICAS, VLLM_CHAT, require
from .harness import CLIENT_KEY, Gateway, engine_metrics, wait_for

RUNNING = {VLLM_CHAT: "vllm:num_requests_running", LLAMA_CHAT: "llamacpp:requests_processing"}
LONG = {VLLM_CHAT: 900, LLAMA_CHAT: 30000}  # tokens: seconds of generation on either engine


def engine_urls(gw: Gateway, pool: str) -> dict[str, str]:
    return {b["id"]: f"http://127.0.0.1:{b['port']}" for b in gw.backends() if b["pool"] == pool and b["port"]}


def running(gw: Gateway, pool: str) -> float:
    return sum(engine_metrics(u).get(RUNNING[pool], 0.0) for u in engine_urls(gw, pool).values())


@contextmanager
def open_stream(url: str, body: dict[str, Any], key: str | None = CLIENT_KEY) -> Iterator[Iterator[str]]:
    """A raw SSE stream; leaving the block closes the connection (a client going away)."""
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    with httpx.Client(timeout=120) as c, c.stream("POST", url, json=body, headers=headers) as r:
        assert r.status_code == 200, r.read()
        yield (line for line in r.iter_lines() if line.startswith("data: "))


def long_completion(pool: str) -> dict[str, Any]:
    return {"model": pool, "prompt": "Hello there", "max_tokens": LONG[pool], "stream": True}


@pytest.mark.parametrize("pool", CHAT_POOLS)
def test_disconnect_frees_the_engine_slot(gateway: Gateway, pool: str) -> None:
    with open_stream(gateway.base_url + "/completions", long_completion(pool)) as events:
        for _ in range(3):
            next(events)
        assert running(gateway, pool) == 1  # the witness works: the request is on the engine
    gone = time.monotonic()
    # A scrape of a loaded engine can itself take a while: what counts is that a scrape
    # started within 1 s of the disconnect already reads 0.
    readings: list[tuple[float, float]] = []
    while time.monotonic() - gone < 1.0:
        started = time.monotonic() - gone
        readings.append((started, running(gateway, pool)))
        if readings[-1][1] == 0:
            break
        time.sleep(0.05)
    assert readings[-1][1] == 0, f"engine still generating 1 s after the client left: {readings}"


@pytest.mark.xfail(strict=False, reason="timing: times out when other jobs load the 2 cores (seen twice at load ~5-10); passes alone. Open: make the load it puts on the engine independent of machine speed.")
def test_balancing_sees_traffic_the_gateway_did_not_send(gateway: Gateway, client: OpenAI) -> None:
    """Fill one llama.cpp replica directly; the gateway must read its gauges and avoid it."""
    require(LLAMA_CHAT)
    urls = engine_urls(gateway, LLAMA_CHAT)
    assert len(urls) == LLAMA_REPLICAS
    busy_id, busy = sorted(urls.items())[0]
    (idle,) = [u for i, u in urls.items() if i != busy_id]
    body = {"model": "x", "prompt": "Hello there", "max_tokens": LONG[LLAMA_CHAT], "stream": True}
    with open_stream(busy + "/v1/completions", body, key=None) as s1, \
            open_stream(busy + "/v1/completions", body, key=None) as s2:
        next(s1), next(s2)
        assert engine_metrics(busy)["llamacpp:requests_processing"] == 2
        time.sleep(1.5)  # three gauge reads (metrics_interval 0.5 s): the gateway has seen them
        before = engine_metrics(idle)["llamacpp:tokens_predicted_total"]
        used = 0
        for _ in range(4):
            r = client.completions.create(model=LLAMA_CHAT, prompt="Hello there", max_tokens=3)
            used += r.usage.completion_tokens if r.usage else 0
        assert wait_for(lambda: engine_metrics(idle)["llamacpp:tokens_predicted_total"] - before == used, 2)


# Seconds for a killed engine to be restarted and ready again (vLLM: a full start-up).
RESTART_WITHIN = {VLLM_CHAT: 600, LLAMA_CHAT: 120}


@pytest.mark.parametrize("pool", CHAT_POOLS)
def test_sigkill_mid_stream(gateway: Gateway, client: OpenAI, pool: str) -> None:
    """An engine killed mid-stream: the client gets an error event, the engine comes back."""
    rows = {b["id"]: b for b in gateway.backends() if b["pool"] == pool}
    stream = client.completions.create(model=pool, prompt="Hello there", max_tokens=LONG[pool], stream=True)
    it = iter(stream)
    next(it)
    victim = next(
        b for b in rows.values()
        if engine_metrics(f"http://127.0.0.1:{b['port']}").get(RUNNING[pool], 0) >= 1
    )
    os.kill(victim["pid"], signal.SIGKILL)
    with pytest.raises(APIError):
        for _ in it:
            pass

    def restarted() -> bool:
        row = next((b for b in gateway.backends() if b["id"] == victim["id"]), None)
        return row is not None and row["restarts"] > victim["restarts"] and row["state"] == "ready"

    assert wait_for(restarted, RESTART_WITHIN[pool], 0.5), gateway.backends()
    r = client.completions.create(model=pool, prompt="Hello there", max_tokens=2)
    assert r.choices[0].text.strip()


def test_hot_reload_adds_a_replica_without_failing_a_request(gateway: Gateway, client: OpenAI) -> None:
    require(LLAMA_CHAT)
    failures: list[BaseException] = []
    served = 0
    stop = threading.Event()

    def traffic() -> None:
        nonlocal served
        while not stop.is_set():
            try:
                client.completions.create(model=LLAMA_CHAT, prompt="Hello there", max_tokens=2)
                served += 1
            except Exception as e:  # noqa: BLE001 - every failure is the finding
                failures.append(e)

    pools = dict(gateway.pools)
    grown = {**pools, LLAMA_CHAT: {**pools[LLAMA_CHAT], "replicas": LLAMA_REPLICAS + 1}}
    worker = threading.Thread(target=traffic)
    worker.start()
    try:
        gateway.write_config(grown)
        assert gateway.admin("POST", "/reload").status_code == 200
        gateway.wait_ready(120, expected=len(gateway.backends()))
        assert sum(b["pool"] == LLAMA_CHAT for b in gateway.backends()) == LLAMA_REPLICAS + 1
        time.sleep(1)
        gateway.write_config(pools)
        assert gateway.admin("POST", "/reload").status_code == 200
        assert wait_for(lambda: sum(b["pool"] == LLAMA_CHAT for b in gateway.backends()) == LLAMA_REPLICAS, 60)
    finally:
        stop.set()
        worker.join(60)
    assert failures == []
    assert served > 0
