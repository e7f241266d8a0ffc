"""The usage ledger equals each engine's own token counters.

vLLM: `vllm:prompt_tokens_total` / `vllm:generation_tokens_total`. llama.cpp counts prompt
tokens served from its cache apart: `llamacpp:prompt_tokens_total` +
`llamacpp:prompt_tokens_cached_total` / `llamacpp:tokens_predicted_total`. Each test
compares the deltas over its own requests (tests run one at a time; nothing else talks
to these engines).

`n` > 1 is left out on purpose: vLLM counts the prompt once per sequence in
`vllm:prompt_tokens_total` (n=2 adds 2 x prompt), while `usage.prompt_tokens` (what OpenAI
bills and the ledger records) counts it once.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from typing import Any

import httpx
import pytest
from openai import OpenAI

from .conftest import CHAT_POOLS, LLAMA_CHAT, VLLM_CHAT
from .harness import CLIENT_KEY, Gateway, RealEngines, engine_metrics, wait_for

PROMPT = {
    VLLM_CHAT: ("vllm:prompt_tokens_total",),
    LLAMA_CHAT: ("llamacpp:prompt_tokens_total", "llamacpp:prompt_tokens_cached_total"),
}
GENERATED = {VLLM_CHAT: "vllm:generation_tokens_total", LLAMA_CHAT: "llamacpp:tokens_predicted_total"}
QUESTION = [{"role": "user", "content": "What is the weather in Paris?"}]


def engine_tokens(gw: Gateway, pool: str) -> tuple[int, int]:
    prompt = generated = 0.0
    for b in gw.backends():
        if b["pool"] != pool or not b["port"]:
            continue
        m = engine_metrics(f"http://127.0.0.1:{b['port']}")
        prompt += sum(m.get(n, 0.0) for n in PROMPT[pool])
        generated += m.get(GENERATED[pool], 0.0)
    return int(prompt), int(generated)


def ledger_tokens(gw: Gateway, pool: str) -> tuple[int, int]:
    row = gw.usage("pool").get(pool, {})
    return int(row.get("prompt_tokens", 0)), int(row.get("completion_tokens", 0))


def assert_ledger_matches(gw: Gateway, pool: str, traffic: Callable[[], None]) -> None:
    e0, l0 = engine_tokens(gw, pool), ledger_tokens(gw, pool)
    traffic()
    want: list[tuple[int, int]] = []

    def settled() -> bool:
        e1, l1 = engine_tokens(gw, pool), ledger_tokens(gw, pool)
        want[:] = [(e1[0] - e0[0], e1[1] - e0[1]), (l1[0] - l0[0], l1[1] - l0[1])]
        return want[0] == want[1]

    wait_for(settled, 5, 0.2)
    engine, ledger = want
    assert engine[1] > 0
    assert ledger == engine, f"ledger (prompt, completion) {ledger} != engine's own counters {engine}"


@pytest.mark.parametrize("pool", CHAT_POOLS)
def test_ledger_equals_engine_counters(client: OpenAI, gateway: Gateway, engines: RealEngines, pool: str) -> None:
    tool: Any = engines.expect["weather_tool"]

    def traffic() -> None:
        client.chat.completions.create(model=pool, messages=QUESTION, max_tokens=32)
        list(client.chat.completions.create(model=pool, messages=QUESTION, max_tokens=32, stream=True))
        list(client.completions.create(model=pool, prompt="Hello there", max_tokens=7, stream=True))
        client.completions.create(model=pool, prompt="Good morning to you", max_tokens=5)
        client.chat.completions.create(model=pool, messages=QUESTION, tools=[tool], max_tokens=32)

    assert_ledger_matches(gateway, pool, traffic)


# vLLM sends its running usage on every chunk (continuous_usage_stats) and aborts a request
# at its next step after the connection closes: at most a step or two is generated after
# the gateway's last read. llama.cpp's figure is estimated from what arrived, and it
# generates ~6000 tokens/s until a write to the closed socket fails: how many tokens that
# is depends on the machine's speed and load, so its bound is measured (below), not fixed.
IN_FLIGHT_VLLM = 2


def overrun_bound(gw: Gateway, pool: str, left_at: float, before: dict[str, float]) -> tuple[int, str]:
    """Tokens llama.cpp can have generated after the client left: the time it took to free
    its slot (polled from its own gauge) times its own seconds per generated token (its
    counters tokens_predicted_seconds_total / tokens_predicted_total over this request).

    Speed-independent: a loaded machine generates more slowly and notices later alike. It
    still fails if the gateway kept the engine generating (slow to close), or missed
    tokens that arrived (the estimate must count everything the engine sent)."""
    def busy() -> float:
        return sum(engine_metrics(u).get("llamacpp:requests_processing", 0.0) for u in gw.engine_urls(pool).values())

    assert wait_for(lambda: busy() == 0, 5, 0.01), "llama.cpp still generating 5 s after the client left"
    window = time.monotonic() - left_at
    after = llama_counters(gw, pool)
    tokens = after["llamacpp:tokens_predicted_total"] - before["llamacpp:tokens_predicted_total"]
    seconds = after["llamacpp:tokens_predicted_seconds_total"] - before["llamacpp:tokens_predicted_seconds_total"]
    per_token = seconds / tokens if tokens > 0 else float("inf")
    bound = math.ceil(window / per_token) + 1  # + the token being written when the socket closed
    return bound, f"{window * 1000:.0f} ms to free the slot at {per_token * 1000:.3f} ms/token"


def llama_counters(gw: Gateway, pool: str) -> dict[str, float]:
    names = ("llamacpp:tokens_predicted_total", "llamacpp:tokens_predicted_seconds_total")
    out = dict.fromkeys(names, 0.0)
    for url in gw.engine_urls(pool).values():
        m = engine_metrics(url)
        for n in names:
            out[n] += m.get(n, 0.0)
    return out


@pytest.mark.parametrize("pool", CHAT_POOLS)
def test_ledger_of_a_cut_short_stream(gateway: Gateway, pool: str) -> None:
    """vLLM: the engine's own running usage, exact. llama.cpp: counted with the model's own
    tokenizer.json (the prompt exactly; cl100k would say 14 tokens where the model has 38),
    flagged as an estimate, never more than the engine generated, and short of it by at
    most what the engine generated after the client left."""
    e0, l0 = engine_tokens(gateway, pool), ledger_tokens(gateway, pool)
    est0 = gateway.usage("pool").get(pool, {}).get("estimated_requests", 0)
    c0 = llama_counters(gateway, pool) if pool == LLAMA_CHAT else {}
    # Words the tiny model's tokenizer splits very differently from cl100k, so an
    # estimate with the wrong tokenizer shows.
    body = {"model": pool, "prompt": "Quixotic zephyrs jinx pterodactyls, xylophonist!",
            "max_tokens": 400, "stream": True}
    with httpx.Client(timeout=60) as c, c.stream(
        "POST", gateway.base_url + "/completions", json=body,
        headers={"Authorization": f"Bearer {CLIENT_KEY}"},
    ) as r:
        got = 0
        for line in r.iter_lines():
            got += line.startswith("data: ")
            if got == 5:
                left_at = time.monotonic()  # the connection closes as the block ends
                break
    bound, why = overrun_bound(gateway, pool, left_at, c0) if pool == LLAMA_CHAT else (IN_FLIGHT_VLLM, "vLLM")
    seen: list[tuple[int, int]] = []

    def settled() -> bool:
        e1, l1 = engine_tokens(gateway, pool), ledger_tokens(gateway, pool)
        seen[:] = [(e1[0] - e0[0], e1[1] - e0[1]), (l1[0] - l0[0], l1[1] - l0[1])]
        engine, ledger = seen
        return ledger[1] > 0 and engine[0] == ledger[0] and 0 <= engine[1] - ledger[1] <= bound

    wait_for(settled, 5, 0.2)
    engine, ledger = seen
    assert 5 <= ledger[1] < 400, "the stream was cut short"
    assert ledger[0] == engine[0], f"prompt: ledger {ledger[0]} != engine {engine[0]}"
    assert 0 <= engine[1] - ledger[1] <= bound, (
        f"completion: ledger {ledger[1]}, engine {engine[1]}; bound {bound} ({why})")
    print(f"\n{pool}: cut short, engine generated {engine[1]}, ledger {ledger[1]}, bound {bound} ({why})")
    estimated = gateway.usage("pool")[pool]["estimated_requests"] - est0
    assert estimated == (0 if pool == VLLM_CHAT else 1)
