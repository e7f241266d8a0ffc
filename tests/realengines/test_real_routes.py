"""Issue #17's routes through the gateway against real vLLM 0.32 (CPU build, tiny model):
Responses and Anthropic Messages with the official SDKs (stream and not, both Anthropic
auth headers), count_tokens, tokenize/detokenize, error shapes (the gateway's and the
engine's), a key refused outside its allowlist on every route, a Responses stream whose
client leaves, rerank and score (every spelling) on a one-label cross-encoder made from the
tiny model (its label's weights are lm_head's row for "a"), and the
ledger against vLLM's own token counters.

Not here: a Messages stream cut mid-way. The tiny model answers a chat in 5 tokens and
the Messages API has no `ignore_eos` (Responses has), so no Messages stream lasts long
enough to leave; `tests/proxy/test_routes_e2e.py` covers it on the simulator.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator

import anthropic
import httpx
import pytest
from openai import OpenAI

try:  # the real-engine tier's harness (branch `realengines`); without it there is nothing to run
    from .conftest import ALIAS, VLLM_CHAT, VLLM_RERANK, require
    from .harness import CLIENT_KEY, EMBED_ONLY_KEY, Gateway, engine_metrics, wait_for
    from .test_lifecycle import open_stream, running
except ImportError:
    pytest.skip("needs tests/realengines/harness.py (the real-engine tier)", allow_module_level=True)

MSGS = [{"role": "user", "content": "What is the weather in Paris?"}]
HEADERS = {"authorization": f"Bearer {CLIENT_KEY}"}


@pytest.fixture(autouse=True)
def _vllm_only() -> None:
    require(VLLM_CHAT, VLLM_RERANK)


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


# (path, body, Anthropic-shaped errors?) for every generating or counting route on a chat pool.
ROUTES = [
    ("/v1/responses", {"model": VLLM_CHAT, "input": "hi", "max_output_tokens": 4}, False),
    ("/v1/messages", {"model": VLLM_CHAT, "max_tokens": 4, "messages": MSGS}, True),
    ("/v1/messages/count_tokens", {"model": VLLM_CHAT, "messages": MSGS}, True),
    ("/tokenize", {"model": VLLM_CHAT, "prompt": "hello"}, False),
    ("/detokenize", {"model": VLLM_CHAT, "tokens": [1, 2]}, False),
]


def error_of(r: httpx.Response, anthropic_shape: bool) -> dict[str, object]:
    """The route's error object, after checking the envelope its clients expect."""
    body = r.json()
    if anthropic_shape:
        assert body["type"] == "error" and set(body["error"]) >= {"type", "message"}, body
        return body["error"]  # type: ignore[no-any-return]
    assert set(body["error"]) >= {"message", "type", "param", "code"}, body
    return body["error"]  # type: ignore[no-any-return]


@pytest.mark.parametrize(("path", "body", "anthropic_shape"), ROUTES, ids=[r[0] for r in ROUTES])
def test_a_key_outside_its_allowlist_is_refused_on_every_route(gateway: Gateway, path: str,
                                                                 body: dict[str, object], anthropic_shape: bool) -> None:
    r = httpx.post(gateway.url + path, json=body, headers={"authorization": f"Bearer {EMBED_ONLY_KEY}"}, timeout=60)
    assert r.status_code == 404, r.text
    err = error_of(r, anthropic_shape)
    assert err["type"] == ("not_found_error" if anthropic_shape else "invalid_request_error")
    assert VLLM_CHAT in str(err["message"])
    ok = httpx.post(gateway.url + path, json=body, headers=HEADERS, timeout=120)
    assert ok.status_code == 200, ok.text  # the same request with a key allowed on the model


@pytest.mark.parametrize(("path", "body", "anthropic_shape"), ROUTES, ids=[r[0] for r in ROUTES])
def test_malformed_json_is_answered_in_the_routes_shape(gateway: Gateway, path: str, body: dict[str, object],
                                                        anthropic_shape: bool) -> None:
    r = httpx.post(gateway.url + path, content=b'{"model": "' + VLLM_CHAT.encode() + b'", ', headers=HEADERS, timeout=60)
    assert r.status_code == 400, r.text
    assert error_of(r, anthropic_shape)["type"] == "invalid_request_error"


ENGINE_REFUSED = [  # well-formed JSON that vLLM itself refuses
    ("/v1/responses", {"model": VLLM_CHAT, "input": "hi", "max_output_tokens": "many"}, False),
    ("/v1/messages", {"model": VLLM_CHAT, "max_tokens": "many", "messages": MSGS}, True),
    ("/tokenize", {"model": VLLM_CHAT, "prompt": 5}, False),
    ("/detokenize", {"model": VLLM_CHAT, "tokens": "many"}, False),
]


@pytest.mark.parametrize(("path", "body", "anthropic_shape"), ENGINE_REFUSED, ids=[r[0] for r in ENGINE_REFUSED])
def test_the_engines_refusals_are_answered_in_the_routes_shape(gateway: Gateway, path: str, body: dict[str, object],
                                                               anthropic_shape: bool) -> None:
    r = httpx.post(gateway.url + path, json=body, headers=HEADERS, timeout=60)
    assert r.status_code == 400, r.text
    err = error_of(r, anthropic_shape)
    assert err["type"] == "invalid_request_error" and err["message"]


def test_a_responses_stream_whose_client_leaves_frees_the_engine(gateway: Gateway) -> None:
    # ignore_eos (a vLLM extension of the Responses request) keeps the tiny model going.
    body = {"model": VLLM_CHAT, "input": "Hello there", "max_output_tokens": 16000, "ignore_eos": True,
            "stream": True}
    # The client keeps reading until it leaves: a Responses event is ~300 bytes a token, and
    # a client that stops reading is cut by the gateway's relay bound (a different test).
    leave = threading.Event()
    read: list[str] = []

    def client() -> None:
        with open_stream(gateway.base_url + "/responses", body) as events:
            for line in events:
                read.append(line)
                if leave.is_set():
                    return

    reader = threading.Thread(target=client)
    reader.start()
    try:
        assert wait_for(lambda: len(read) >= 12 and running(gateway, VLLM_CHAT) == 1, 30), (len(read), read[-1:])
    finally:
        leave.set()
        reader.join(30)
    assert not reader.is_alive() and '"response.completed"' not in read[-1], read[-1]
    gone = time.monotonic()
    readings: list[tuple[float, float]] = []
    while time.monotonic() - gone < 1.0:
        readings.append((time.monotonic() - gone, running(gateway, VLLM_CHAT)))
        if readings[-1][1] == 0:
            break
        time.sleep(0.05)
    assert readings[-1][1] == 0, f"engine still generating 1 s after the client left: {readings}"

DOCS = ["the sea is blue", "a cat", "waves"]


def test_rerank_and_score_every_spelling_metered_as_vllm_counts(gateway: Gateway) -> None:
    (url,) = gateway.engine_urls(VLLM_RERANK).values()
    before_engine = engine_metrics(url).get("vllm:prompt_tokens_total", 0.0)
    row0 = gateway.usage("pool").get(VLLM_RERANK, {})
    billed = 0
    for path in ("/v1/rerank", "/rerank", "/v2/rerank"):
        r = httpx.post(gateway.url + path, json={"model": VLLM_RERANK, "query": "sea", "documents": DOCS, "top_n": 2},
                       headers=HEADERS, timeout=60)
        assert r.status_code == 200, r.text
        out = r.json()
        assert out["model"] == VLLM_RERANK and len(out["results"]) == 2
        assert all(isinstance(x["relevance_score"], float) for x in out["results"])
        billed += out["usage"]["prompt_tokens"]
    for path in ("/v1/score", "/score"):
        r = httpx.post(gateway.url + path, json={"model": VLLM_RERANK, "text_1": "sea", "text_2": DOCS[:2]},
                       headers=HEADERS, timeout=60)
        assert r.status_code == 200, r.text
        assert [d["index"] for d in r.json()["data"]] == [0, 1] and r.json()["model"] == VLLM_RERANK
        billed += r.json()["usage"]["prompt_tokens"]
    assert billed > 0
    # The engine's counter, the answers' usage and the ledger agree.
    assert wait_for(lambda: engine_metrics(url)["vllm:prompt_tokens_total"] - before_engine == billed, 5)

    def ledgered() -> int:
        row = gateway.usage("pool").get(VLLM_RERANK, {})
        return int(row.get("prompt_tokens", 0)) - int(row0.get("prompt_tokens", 0))

    assert wait_for(lambda: ledgered() == billed, 5), (ledgered(), billed)
    # A chat model on the rerank route, and a key outside its allowlist: refused by the gateway.
    r = httpx.post(gateway.url + "/v1/rerank", json={"model": VLLM_CHAT, "query": "q", "documents": ["d"]},
                   headers=HEADERS, timeout=60)
    assert r.status_code == 400 and r.json()["error"]["code"] == "model_not_supported_on_endpoint"
    r = httpx.post(gateway.url + "/v1/rerank", json={"model": VLLM_RERANK, "query": "q", "documents": ["d"]},
                   headers={"authorization": f"Bearer {EMBED_ONLY_KEY}"}, timeout=60)
    assert r.status_code == 404 and r.json()["error"]["code"] == "model_not_found"
