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
# Long enough that the engine is still generating when the client leaves, however late
# its leaving reaches the engine: llama.cpp finishes 400 tokens in ~70 ms, vLLM on two
# busy cores once finished 400 before the client's close arrived.
CUT_MAX_TOKENS = {VLLM_CHAT: 16000, LLAMA_CHAT: 30000}
LLAMA_COUNTERS = ("llamacpp:tokens_predicted_total", "llamacpp:tokens_predicted_seconds_total")


def llama_counters(urls: list[str]) -> dict[str, float]:
    out = dict.fromkeys(LLAMA_COUNTERS, 0.0)
    for url in urls:
        m = engine_metrics(url)
        for n in LLAMA_COUNTERS:
            out[n] += m.get(n, 0.0)
    return out


def overrun_bound(urls: list[str], left_at: float, before: dict[str, float]) -> tuple[int, str]:
    """Tokens llama.cpp can have generated after the client left: the time it took to free
    its slot (its own gauge, polled) times its own seconds per generated token (its
    counters tokens_predicted_seconds_total / tokens_predicted_total over this request).

    Speed-independent: a loaded machine generates more slowly and notices later alike.
    It fails if the gateway missed tokens the engine had sent before the client left (the
    estimate must count everything that arrived) or billed more than was generated."""
    polled_at = [0.0]
    with httpx.Client(timeout=10) as c:  # one keep-alive connection: the polls stay fast
        def busy() -> float:
            polled_at[0] = time.monotonic()  # the engine was still busy before this instant, or not
            total = 0.0
            for url in urls:
                for line in c.get(url + "/metrics").text.splitlines():
                    if line.startswith("llamacpp:requests_processing"):
                        total += float(line.rsplit(" ", 1)[1])
            return total

        freed = wait_for(lambda: busy() == 0, 5, 0.002)
    # Up to the start of the scrape that found the slot free: a scrape under load takes a
    # while, and its own duration is not generation time.
    window = polled_at[0] - left_at
    assert freed, "llama.cpp still generating 5 s after the client left"
    after = llama_counters(urls)
    tokens = after[LLAMA_COUNTERS[0]] - before[LLAMA_COUNTERS[0]]
    seconds = after[LLAMA_COUNTERS[1]] - before[LLAMA_COUNTERS[1]]
    per_token = seconds / tokens if tokens > 0 else float("inf")
    bound = math.ceil(window / per_token) + 1  # + the token being written when the socket closed
    return bound, f"{window * 1000:.0f} ms to free the slot at {per_token * 1000:.3f} ms/token"


@pytest.mark.parametrize("pool", CHAT_POOLS)
def test_ledger_of_a_cut_short_stream(gateway: Gateway, pool: str) -> None:
    """vLLM: the engine's own running usage, exact. llama.cpp: counted with the model's own
    tokenizer.json (the prompt exactly; cl100k would say 14 tokens where the model has 38),
    flagged as an estimate, never more than the engine generated, and short of it by at
    most what the engine generated after the client left."""
    urls = list(gateway.engine_urls(pool).values())
    e0, l0 = engine_tokens(gateway, pool), ledger_tokens(gateway, pool)
    est0 = gateway.usage("pool").get(pool, {}).get("estimated_requests", 0)
    c0 = llama_counters(urls) if pool == LLAMA_CHAT else {}
    # Words the tiny model's tokenizer splits very differently from cl100k, so an
    # estimate with the wrong tokenizer shows.
    body = {"model": pool, "prompt": "Quixotic zephyrs jinx pterodactyls, xylophonist!",
            "max_tokens": CUT_MAX_TOKENS[pool], "stream": True, "ignore_eos": True}
    left_at = 0.0
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
    bound, why = overrun_bound(urls, left_at, c0) if pool == LLAMA_CHAT else (IN_FLIGHT_VLLM, "vLLM")
    seen: list[tuple[int, int]] = []

    def settled() -> bool:
        e1, l1 = engine_tokens(gateway, pool), ledger_tokens(gateway, pool)
        seen[:] = [(e1[0] - e0[0], e1[1] - e0[1]), (l1[0] - l0[0], l1[1] - l0[1])]
        engine, ledger = seen
        return ledger[1] > 0 and engine[0] == ledger[0] and 0 <= engine[1] - ledger[1] <= bound

    wait_for(settled, 5, 0.2)
    engine, ledger = seen
    print(f"\n{pool}: cut short, engine generated {engine[1]}, ledger {ledger[1]}, bound {bound} ({why})")
    assert 5 <= ledger[1] and engine[1] < CUT_MAX_TOKENS[pool], "the engine's generation was cut short"
    assert ledger[0] == engine[0], f"prompt: ledger {ledger[0]} != engine {engine[0]}"
    assert 0 <= engine[1] - ledger[1] <= bound, (
        f"completion: ledger {ledger[1]}, engine {engine[1]}; bound {bound} ({why})")
    estimated = gateway.usage("pool")[pool]["estimated_requests"] - est0
    assert estimated == (0 if pool == VLLM_CHAT else 1)
