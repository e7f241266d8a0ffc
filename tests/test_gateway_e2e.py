"""The gateway core over real sockets: simulated engines, our HTTP server, the official openai SDK."""

from __future__ import annotations

import base64
import struct
import time
from collections.abc import Iterator
from contextlib import ExitStack
from typing import Any

import httpx
import openai
import pytest

from gateway.sim.testing import SimProcess

from .gw import ADMIN_KEY, CLIENT_KEY, OTHER_KEY, GatewayServer, auth_yaml, wait_until

FAST = ["--ttft-ms", "1", "--itl-ms", "1", "--max-num-seqs", "64"]


@pytest.fixture(scope="module")
def cluster() -> Iterator[dict[str, Any]]:
    with ExitStack() as stack:
        s1 = stack.enter_context(SimProcess(["--served-model-name", "engine-chat", *FAST]))
        s2 = stack.enter_context(SimProcess(["--served-model-name", "engine-chat", *FAST]))
        slow = stack.enter_context(SimProcess(["--served-model-name", "engine-slow", "--ttft-ms", "20", "--itl-ms", "50"]))
        emb = stack.enter_context(SimProcess(["--served-model-name", "engine-emb", "--embedding", "--embedding-dim", "64"]))
        cfg = auth_yaml('["emb"]') + f"""
store: "memory://"
pools:
  chat: {{endpoints: [{s1.base_url}, {s2.base_url}], aliases: [gpt-alias]}}
  slow: {{endpoints: [{slow.base_url}]}}
  emb: {{kind: embedding, endpoints: [{emb.base_url}]}}
"""
        gw = stack.enter_context(GatewayServer(cfg))
        yield {"gw": gw, "s1": s1, "s2": s2, "slow": slow, "emb": emb}


_clients: list[openai.OpenAI] = []


@pytest.fixture(autouse=True)
def _close_clients() -> Iterator[None]:
    yield
    while _clients:
        _clients.pop().close()


def client(gw: GatewayServer, key: str = CLIENT_KEY, **kw: Any) -> openai.OpenAI:
    c = openai.OpenAI(base_url=gw.base_url, api_key=key, max_retries=0, **kw)
    _clients.append(c)
    return c


def test_chat_non_stream_and_stream(cluster: dict[str, Any]) -> None:
    c = client(cluster["gw"])
    r = c.chat.completions.create(model="chat", messages=[{"role": "user", "content": "hello"}], max_tokens=12)
    assert r.model == "chat"
    assert r.choices[0].message.content
    assert r.usage is not None and r.usage.completion_tokens == 12 and r.choices[0].finish_reason == "length"

    chunks = list(c.chat.completions.create(model="gpt-alias", messages=[{"role": "user", "content": "hi"}],
                                            max_tokens=8, stream=True))
    assert all(ch.model == "gpt-alias" for ch in chunks)  # the name the client used, in every chunk
    assert all(ch.usage is None for ch in chunks)  # not asked for: the injected usage chunk is hidden
    text = "".join(ch.choices[0].delta.content or "" for ch in chunks if ch.choices)
    assert text

    chunks = list(c.chat.completions.create(model="chat", messages=[{"role": "user", "content": "hi"}], max_tokens=8,
                                            stream=True, stream_options={"include_usage": True}))
    assert chunks[-1].choices == [] and chunks[-1].usage is not None and chunks[-1].usage.completion_tokens == 8


def test_completions_stream_and_non_stream(cluster: dict[str, Any]) -> None:
    c = client(cluster["gw"])
    r = c.completions.create(model="chat", prompt="Once upon a time", max_tokens=5)
    assert r.object == "text_completion" and r.choices[0].text and r.usage and r.usage.completion_tokens == 5
    parts = list(c.completions.create(model="chat", prompt="Once", max_tokens=5, stream=True))
    assert "".join(p.choices[0].text for p in parts if p.choices)


def test_embeddings_float_and_base64_agree(cluster: dict[str, Any]) -> None:
    c = client(cluster["gw"])
    as_b64 = c.embeddings.create(model="emb", input=["alpha", "beta"])  # the SDK asks for base64
    as_float = c.embeddings.create(model="emb", input=["alpha", "beta"], encoding_format="float")
    assert [d.index for d in as_float.data] == [0, 1]
    for a, b in zip(as_b64.data, as_float.data, strict=True):
        assert len(a.embedding) == 64
        assert a.embedding == pytest.approx(b.embedding, abs=1e-6)
    raw = httpx.post(cluster["gw"].base_url + "/embeddings", headers={"authorization": f"Bearer {CLIENT_KEY}"},
                     json={"model": "emb", "input": "x", "encoding_format": "base64"}).json()
    vec = struct.unpack(f"<{64}f", base64.b64decode(raw["data"][0]["embedding"]))
    assert abs(sum(v * v for v in vec) - 1.0) < 1e-4


def test_models_listing_is_filtered_per_key(cluster: dict[str, Any]) -> None:
    gw = cluster["gw"]
    ids = [m.id for m in client(gw).models.list()]
    assert ids == ["chat", "slow", "emb"]
    assert [m.id for m in client(gw, OTHER_KEY).models.list()] == ["emb"]
    assert client(gw).models.retrieve("gpt-alias").id == "gpt-alias"
    with pytest.raises(openai.NotFoundError):
        client(gw, OTHER_KEY).models.retrieve("chat")
    # A key outside its allowlist sees the model as nonexistent, not forbidden.
    with pytest.raises(openai.NotFoundError) as e:
        client(gw, OTHER_KEY).chat.completions.create(model="chat", messages=[{"role": "user", "content": "x"}])
    assert e.value.body["code"] == "model_not_found" and e.value.body["param"] == "model"  # type: ignore[index]


def test_auth_and_input_errors_are_openai_shaped(cluster: dict[str, Any]) -> None:
    gw = cluster["gw"]
    msgs = [{"role": "user", "content": "x"}]
    with pytest.raises(openai.AuthenticationError) as e:
        client(gw, "sk-wrong").chat.completions.create(model="chat", messages=msgs)  # type: ignore[arg-type]
    assert e.value.body["code"] == "invalid_api_key"  # type: ignore[index]
    with pytest.raises(openai.NotFoundError):
        client(gw).chat.completions.create(model="nope", messages=msgs)  # type: ignore[arg-type]
    with pytest.raises(openai.BadRequestError) as e:
        client(gw).chat.completions.create(model="emb", messages=msgs)  # type: ignore[arg-type]
    assert e.value.body["code"] == "model_not_supported_on_endpoint"  # type: ignore[index]

    h = {"authorization": f"Bearer {CLIENT_KEY}", "content-type": "application/json"}
    cases = [
        ("POST", "/v1/chat/completions", b"{not json", {}, 400, "invalid_json"),
        ("POST", "/v1/chat/completions", b'{"messages": []}', {}, 400, "missing_model"),
        ("POST", "/v1/chat/completions", b'{"model": 5}', {}, 400, "invalid_type"),
        ("POST", "/v1/chat/completions", b'{"model": "chat", "stream": "yes"}', {}, 400, "invalid_type"),
        ("POST", "/v1/chat/completions", b"{}", {"authorization": ""}, 401, "invalid_api_key"),
        ("GET", "/v1/chat/completions", b"", {}, 405, "method_not_allowed"),
        ("GET", "/v2/unknown", b"", {}, 404, "not_found"),
    ]
    for method, path, body, extra, status, code in cases:
        r = httpx.request(method, gw.url + path, content=body, headers={**h, **extra})
        assert r.status_code == status, (path, body, r.text)
        err = r.json()["error"]
        assert set(err) == {"message", "type", "param", "code"} and err["code"] == code, r.text
    r = httpx.get(gw.url + "/health")
    assert r.json() == {"status": "healthy"}




def test_first_event_arrives_long_before_the_last_token(cluster: dict[str, Any]) -> None:
    gw = cluster["gw"]
    t0 = time.monotonic()
    times = []
    with httpx.stream("POST", gw.base_url + "/chat/completions", headers={"authorization": f"Bearer {CLIENT_KEY}"},
                      json={"model": "slow", "messages": [{"role": "user", "content": "x"}], "max_tokens": 20,
                            "stream": True}, timeout=10) as r:
        assert r.headers["content-type"].startswith("text/event-stream")
        assert r.headers["cache-control"] == "no-cache" and r.headers["x-accel-buffering"] == "no"
        assert "content-encoding" not in r.headers and r.headers["x-request-id"]
        for line in r.iter_lines():
            if line.startswith("data:"):
                times.append(time.monotonic() - t0)
    # 20 tokens at 50 ms: the whole answer takes ~1 s; the first event must not wait for it.
    assert times[-1] > 0.8
    assert times[0] < 0.35, times[:3]
    gaps = [b - a for a, b in zip(times[1:-3], times[2:-2], strict=False)]
    assert max(gaps) < 0.3  # events trickle in, not in lumps


def test_client_disconnect_mid_stream_frees_the_engine_slot(cluster: dict[str, Any]) -> None:
    gw, slow = cluster["gw"], cluster["slow"]
    with httpx.stream("POST", gw.base_url + "/chat/completions", headers={"authorization": f"Bearer {CLIENT_KEY}"},
                      json={"model": "slow", "messages": [{"role": "user", "content": "x"}], "max_tokens": 200,
                            "stream": True}, timeout=10) as r:
        it = r.iter_lines()
        next(it)
        assert wait_until(lambda: slow.metrics().get("vllm:num_requests_running", 0) == 1, 2)
    # Leaving the block closed the connection mid-stream.
    assert wait_until(lambda: slow.metrics().get("vllm:num_requests_running", 1) == 0, 1.0)
    assert wait_until(lambda: gw.state.pools["slow"].outstanding == 0, 1.0)


def test_client_disconnect_on_non_stream_request_frees_the_slot(cluster: dict[str, Any]) -> None:
    gw, slow = cluster["gw"], cluster["slow"]
    with pytest.raises(httpx.ReadTimeout):
        httpx.post(gw.base_url + "/chat/completions", headers={"authorization": f"Bearer {CLIENT_KEY}"},
                   json={"model": "slow", "messages": [{"role": "user", "content": "x"}], "max_tokens": 100}, timeout=0.5)
    assert wait_until(lambda: slow.metrics().get("vllm:num_requests_running", 1) == 0, 1.0)
    assert wait_until(lambda: gw.state.pools["slow"].outstanding == 0, 1.0)










def test_admin_paths_need_the_admin_key(cluster: dict[str, Any]) -> None:
    gw = cluster["gw"]
    assert httpx.get(gw.url + "/admin/backends").status_code == 401
    assert httpx.get(gw.url + "/admin/backends", headers={"authorization": f"Bearer {CLIENT_KEY}"}).status_code == 403
    r = httpx.get(gw.url + "/admin/backends", headers={"authorization": f"Bearer {ADMIN_KEY}"})
    assert r.status_code == 200


def test_external_endpoint_queue_gauges_reach_the_balancer() -> None:
    """Traffic that bypasses the gateway shows only in the engine's /metrics; it must count."""
    with SimProcess(["--served-model-name", "m", "--ttft-ms", "1", "--itl-ms", "50", "--max-num-seqs", "1"]) as sim:
        cfg = auth_yaml() + f"""
store: "memory://"
engines: {{endpoint_health: {{interval: 5, metrics_interval: 0.1}}}}
pools:
  m: {{endpoints: [{sim.base_url}]}}
"""
        with GatewayServer(cfg) as gw:
            b = gw.state.pools["m"].backends[0]
            # Two direct requests: one runs, one waits at the engine, none through us.
            streams = [sim.open_stream("/v1/chat/completions", {"model": "m", "max_tokens": 100, "stream": True,
                                                                 "messages": [{"role": "user", "content": "x"}]})
                       for _ in range(2)]
            try:
                assert wait_until(lambda: b.engine_running == 1 and b.engine_waiting == 1, 3)
                assert b.outstanding == 0
            finally:
                for conn, _resp in streams:
                    conn.close()
            assert wait_until(lambda: b.engine_running == 0 and b.engine_waiting == 0, 3)


@pytest.mark.parametrize(
    "body",
    [
        {"model": "chat"},  # no messages
        {"model": "chat", "messages": "hello"},
        {"model": "chat", "messages": [{"role": "user", "content": "x"}], "max_tokens": -1},
        {"model": "chat", "messages": [{"role": "user", "content": "x"}], "n": 0},
    ],
)
def test_bad_inputs_the_engine_rejects_come_back_openai_shaped(cluster: dict[str, Any], body: dict[str, Any]) -> None:
    gw = cluster["gw"]
    r = httpx.post(gw.base_url + "/chat/completions", headers={"authorization": f"Bearer {CLIENT_KEY}"}, json=body)
    assert r.status_code == 400, r.text
    err = r.json()["error"]
    assert set(err) == {"message", "type", "param", "code"}
    assert err["type"] == "invalid_request_error" and isinstance(err["code"], str) and err["message"]
    assert wait_until(lambda: gw.state.pools["chat"].outstanding == 0, 1)
