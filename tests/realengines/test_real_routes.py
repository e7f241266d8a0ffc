"""Issue #17's routes through the gateway against real vLLM 0.32 (CPU build, tiny model):
Responses and Anthropic Messages with the official SDKs (stream and not, both Anthropic
auth headers), count_tokens, tokenize/detokenize, error shapes, and the ledger against
vLLM's own token counters.
"""

from __future__ import annotations

from collections.abc import Iterator

import anthropic
import httpx
import pytest
from openai import OpenAI

try:  # the real-engine tier's harness (branch `realengines`); without it there is nothing to run
    from .conftest import ALIAS, VLLM_CHAT, require
    from .harness import CLIENT_KEY, Gateway, engine_metrics, wait_for
except ImportError:
    pytest.skip("needs tests/realengines/harness.py (the real-engine tier)", allow_module_level=True)

MSGS = [{"role": "user", "content": "What is the weather in Paris?"}]
HEADERS = {"authorization": f"Bearer {CLIENT_KEY}"}


@pytest.fixture(autouse=True)
def _vllm_only() -> None:
    require(VLLM_CHAT)


@pytest.fixture(params=["x-api-key", "bearer"])
def claude(request: pytest.FixtureRequest, gateway: Gateway) -> Iterator[anthropic.Anthropic]:
    kw = {"api_key": CLIENT_KEY} if request.param == "x-api-key" else {"auth_token": CLIENT_KEY}
    with anthropic.Anthropic(base_url=gateway.url, max_retries=0, timeout=120, **kw) as c:  # type: ignore[arg-type]
        yield c


def engine_tokens(gateway: Gateway) -> tuple[int, int]:
    prompt = generated = 0.0
    for url in gateway.engine_urls(VLLM_CHAT).values():  # the pool's replicas
        m = engine_metrics(url)
        prompt += m.get("vllm:prompt_tokens_total", 0.0)
        generated += m.get("vllm:generation_tokens_total", 0.0)
    return int(prompt), int(generated)


def ledger_tokens(gateway: Gateway) -> tuple[int, int]:
    row = gateway.usage("pool").get(VLLM_CHAT, {})
    return int(row.get("prompt_tokens", 0)), int(row.get("completion_tokens", 0))


def test_responses_stream_and_not(client: OpenAI) -> None:
    r = client.responses.create(model=VLLM_CHAT, input="What is the weather?", max_output_tokens=16)
    assert r.model == VLLM_CHAT and r.usage is not None and r.usage.output_tokens > 0
    events = list(client.responses.create(model=ALIAS[VLLM_CHAT], input="What is the weather?",
                                          max_output_tokens=16, stream=True))
    assert events[0].type == "response.created" and events[-1].type == "response.completed"
    assert [e.sequence_number for e in events] == list(range(len(events)))
    assert events[-1].response.model == ALIAS[VLLM_CHAT]


def test_messages_stream_not_and_count_tokens(claude: anthropic.Anthropic) -> None:
    m = claude.messages.create(model=VLLM_CHAT, max_tokens=16, messages=MSGS)  # type: ignore[arg-type]
    assert m.model == VLLM_CHAT and m.usage.input_tokens > 0 and m.usage.output_tokens > 0
    assert [b.type for b in m.content][0] == "thinking"  # vLLM's deepseek_r1 parser -> thinking block
    with claude.messages.stream(model=VLLM_CHAT, max_tokens=16, messages=MSGS) as s:  # type: ignore[arg-type]
        final = s.get_final_message()
    assert final.usage.output_tokens > 0
    n = claude.messages.count_tokens(model=VLLM_CHAT, messages=MSGS)  # type: ignore[arg-type]
    assert n.input_tokens == m.usage.input_tokens


def test_messages_errors_are_anthropic_shaped(gateway: Gateway) -> None:
    url = gateway.base_url + "/messages"
    r = httpx.post(url, json={"model": VLLM_CHAT, "messages": MSGS}, headers={"x-api-key": CLIENT_KEY}, timeout=60)
    assert r.status_code == 400 and r.json()["type"] == "error"  # vLLM: max_tokens is required
    assert r.json()["error"]["type"] == "invalid_request_error"
    r = httpx.post(url, json={"model": VLLM_CHAT, "max_tokens": 4, "messages": MSGS}, headers={"x-api-key": "bad"})
    assert r.status_code == 401 and r.json()["error"]["type"] == "authentication_error"


def test_tokenize_and_detokenize(gateway: Gateway) -> None:
    r = httpx.post(gateway.url + "/tokenize", json={"model": VLLM_CHAT, "prompt": "hello world"}, headers=HEADERS)
    assert r.status_code == 200 and r.json()["count"] == len(r.json()["tokens"]) > 0
    d = httpx.post(gateway.url + "/detokenize", json={"model": VLLM_CHAT, "tokens": r.json()["tokens"]},
                   headers=HEADERS)
    assert d.status_code == 200 and "hello" in d.json()["prompt"]


def test_ledger_equals_vllm_counters(gateway: Gateway, client: OpenAI) -> None:
    e0, l0 = engine_tokens(gateway), ledger_tokens(gateway)
    with anthropic.Anthropic(base_url=gateway.url, api_key=CLIENT_KEY, max_retries=0, timeout=120) as c:
        client.responses.create(model=VLLM_CHAT, input="one", max_output_tokens=12)
        list(client.responses.create(model=VLLM_CHAT, input="two", max_output_tokens=12, stream=True))
        c.messages.create(model=VLLM_CHAT, max_tokens=12, messages=MSGS)  # type: ignore[arg-type]
        with c.messages.stream(model=VLLM_CHAT, max_tokens=12, messages=MSGS) as s:  # type: ignore[arg-type]
            s.get_final_message()
        c.messages.count_tokens(model=VLLM_CHAT, messages=MSGS)  # type: ignore[arg-type]
    httpx.post(gateway.url + "/tokenize", json={"model": VLLM_CHAT, "prompt": "hi"}, headers=HEADERS)
    seen: list[tuple[int, int]] = []

    def settled() -> bool:
        e1, l1 = engine_tokens(gateway), ledger_tokens(gateway)
        seen[:] = [(e1[0] - e0[0], e1[1] - e0[1]), (l1[0] - l0[0], l1[1] - l0[1])]
        return seen[0] == seen[1]

    wait_for(settled, 5, 0.2)
    assert seen[0][1] > 0 and seen[1] == seen[0], f"ledger {seen[1]} != vLLM's counters {seen[0]}"
