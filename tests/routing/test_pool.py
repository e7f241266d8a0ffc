"""Unit tests of the hot path's pure pieces: keys, SSE framing, header rules, pools, balancers."""

from __future__ import annotations

import asyncio

import orjson
import pytest

from gateway import config
from gateway.errors import GatewayError
from gateway.keys.auth import KeyRing, bearer, hash_key
from gateway.proxy.bodyedit import with_include_usage
from gateway.proxy.headers import request_headers, response_headers
from gateway.proxy.plan import replace_model
from gateway.proxy.sse import EventFramer, body_usage, event_usage, is_usage_only
from gateway.routing.backend import Backend, BackendState
from gateway.routing.policies import make_balancer
from gateway.routing.pool import Pool


def ring() -> KeyRing:
    cfg = config.AuthConfig(
        admin_key="adm",
        keys=[config.KeyConfig(name="a", key_sha256=hash_key("sk-a"), models=["qwen*"])],
    )
    return KeyRing.from_config(cfg)


def test_keys_hashed_lookup_allowlist_admin() -> None:
    r = ring()
    assert r.lookup("sk-a") is not None and r.lookup("sk-a").name == "a"  # type: ignore[union-attr]
    assert r.lookup("sk-b") is None and r.lookup(None) is None
    k = r.lookup("sk-a")
    assert k is not None and k.allows("qwen3-8b") and not k.allows("llama")
    assert r.is_admin("adm") and not r.is_admin("sk-a")
    assert bearer("Bearer x") == "x" and bearer("bearer  x ") == "x" and bearer("Basic x") is None


def test_none_mode_serves_anonymous() -> None:
    r = KeyRing.from_config(config.AuthConfig(mode="none"))
    assert r.lookup(None) is not None and r.lookup("anything") is not None


def test_framer_handles_any_split() -> None:
    stream = b'data: {"a":1}\n\ndata: {"b":2}\n\ndata: [DONE]\n\n'
    for cut in range(1, len(stream)):
        f = EventFramer()
        events = f.feed(stream[:cut]) + f.feed(stream[cut:])
        assert b"".join(events) == stream
        assert len(events) == 3


def test_usage_detection_only_parses_usage_events() -> None:
    assert event_usage(b'data: {"choices":[{"delta":{}}],"usage":null}\n\n') is None
    ev = b'data: {"choices":[],"usage":{"prompt_tokens":3,"completion_tokens":4,"total_tokens":7}}\n\n'
    assert event_usage(ev) == {"prompt_tokens": 3, "completion_tokens": 4, "total_tokens": 7}
    assert is_usage_only(ev)
    body = b'{"choices":[{"message":{"content":"\\"usage\\": {x"}}],"usage":{"prompt_tokens":1,"prompt_tokens_details":{"cached_tokens":0}}}'
    assert body_usage(body) == {"prompt_tokens": 1, "prompt_tokens_details": {"cached_tokens": 0}}


@pytest.mark.parametrize(
    "raw",
    [b'{"model":"m","stream":true}', b'  {"model":"m"}', b"{}", b'{"stream_options":{"include_usage":false},"model":"m"}'],
)
def test_include_usage_injection_keeps_the_rest(raw: bytes) -> None:
    body = orjson.loads(raw)
    out = orjson.loads(with_include_usage(raw, body))
    assert out["stream_options"]["include_usage"] is True
    assert {k: v for k, v in out.items() if k != "stream_options"} == {k: v for k, v in body.items() if k != "stream_options"}


def test_request_headers_replace_key_and_drop_hop_by_hop() -> None:
    client = [
        (b"authorization", b"Bearer client-secret"),
        (b"connection", b"keep-alive"),
        (b"transfer-encoding", b"chunked"),
        (b"content-length", b"10"),
        (b"accept-encoding", b"gzip, deflate, br"),
        (b"host", b"gw"),
        (b"x-openwebui-user-id", b"u1"),
    ]
    h = request_headers(client, "req-1", "upstream-key")
    assert h["authorization"] == "Bearer upstream-key"
    assert h["accept-encoding"] == "identity"
    assert h["x-request-id"] == "req-1"
    assert h["x-openwebui-user-id"] == "u1"
    for dropped in ("connection", "transfer-encoding", "content-length", "host"):
        assert dropped not in h
    assert "authorization" not in request_headers(client, "r", None)


def test_response_headers_drop_framing() -> None:
    out = dict(response_headers({"Content-Encoding": "gzip", "Transfer-Encoding": "chunked", "X-Engine": "v"}))
    assert out == {b"x-engine": b"v"}


def test_replace_model_only_touches_the_key() -> None:
    ev = b'data: {"id":"x","model":"engine","choices":[{"delta":{"content":"\\"model\\":\\"no\\""}}]}\n\n'
    out = replace_model(ev, b"alias")
    assert orjson.loads(out[6:])["model"] == "alias"
    assert orjson.loads(out[6:])["choices"][0]["delta"]["content"] == '"model":"no"'
    assert replace_model(b'{"model": "e"}', b"a") == b'{"model": "a"}'
    same = b'{"model":"a"}'
    assert replace_model(same, b"a") is same


def _pool(n: int, max_conc: int = 2, queue: int = 2, timeout: float = 0.3, balancer: str = "least_outstanding") -> Pool:
    cfg = config.PoolConfig(
        endpoints=[f"http://h:{i}/v1" for i in range(n)],
        max_concurrency=max_conc,
        balancer=balancer,  # type: ignore[arg-type]
        queue=config.QueueConfig(max_size=queue, timeout=timeout),
    )
    p = Pool("p", cfg)
    for i in range(n):
        p.add(Backend(id=f"b{i}", pool="p", url=f"http://h:{i}/v1", max_concurrency=max_conc))
    return p


def test_pool_least_outstanding_fifo_queue_429_and_timeout() -> None:
    async def run() -> None:
        p = _pool(2)
        got = [await p.acquire() for _ in range(4)]
        assert sorted(b.id for b in got) == ["b0", "b0", "b1", "b1"]  # spread by outstanding
        waiter1 = asyncio.ensure_future(p.acquire())
        waiter2 = asyncio.ensure_future(p.acquire())
        await asyncio.sleep(0)
        with pytest.raises(GatewayError) as e:
            await p.acquire()
        assert e.value.status == 429 and e.value.headers["retry-after"]
        p.release(got[0])
        assert (await waiter1) is got[0]  # FIFO: the first waiter gets the freed slot
        assert not waiter2.done()
        with pytest.raises(GatewayError) as e:
            await waiter2
        assert e.value.status == 503 and "busy" in e.value.message
        assert p.queued == 0
        for b in [got[1], got[2], got[3], got[0]]:
            p.release(b)
        assert p.outstanding == 0

    asyncio.run(run())


def test_pool_with_no_ready_backend_waits_then_503() -> None:
    async def run() -> None:
        p = _pool(1, timeout=0.2)
        p.backends[0].state = BackendState.STARTING
        fut = asyncio.ensure_future(p.acquire())
        await asyncio.sleep(0.05)
        p.backends[0].state = BackendState.READY
        p.wake()
        b = await fut
        p.release(b)
        p.backends[0].state = BackendState.STARTING
        with pytest.raises(GatewayError) as e:
            await p.acquire()
        assert e.value.status == 503 and "no ready backend" in e.value.message

    asyncio.run(run())


def test_cancelled_waiter_leaves_queue_and_leaks_nothing() -> None:
    async def run() -> None:
        p = _pool(1, max_conc=1)
        held = await p.acquire()
        fut = asyncio.ensure_future(p.acquire())
        await asyncio.sleep(0)
        fut.cancel()
        await asyncio.sleep(0)
        assert p.queued == 0
        p.release(held)
        assert p.outstanding == 0

    asyncio.run(run())


def test_balancers() -> None:
    bs = [Backend(id=f"b{i}", pool="p", url="u", max_concurrency=4) for i in range(3)]
    rr = make_balancer("round_robin")
    assert [rr.choose(bs).id for _ in range(4)] == ["b0", "b1", "b2", "b0"]
    lo = make_balancer("least_outstanding", seed=1)
    bs[0].outstanding, bs[1].outstanding, bs[2].outstanding = 2, 1, 3
    assert lo.choose(bs).id == "b1"
    bs[1].engine_waiting = 5  # the engine's own queue counts too
    assert lo.choose(bs).id == "b0"
    rnd = make_balancer("random", seed=3)
    assert {rnd.choose(bs).id for _ in range(50)} == {"b0", "b1", "b2"}
    with pytest.raises(ValueError):
        make_balancer("nope")


def test_event_usage_spaced_and_null() -> None:
    assert event_usage(b'data: {"choices": [], "usage": {"prompt_tokens": 2}}\n\n') == {"prompt_tokens": 2}
    assert event_usage(b'data: {"choices": [{"delta": {}}], "usage": null}\n\n') is None


def test_observe_non_stream_does_not_invent_a_per_token_speed() -> None:
    b = Backend(id="b", pool="p", url="u", max_concurrency=1)
    b.observe(None, 2.0, 100)  # non-stream: 100 tokens in 2 s
    assert b.ewma_tpot == pytest.approx(0.02) and b.ewma_ttft is None
    b.observe(0.5, 1.5, 11)  # stream: 10 tokens after the first in 1 s
    assert b.ewma_tpot == pytest.approx(0.8 * 0.02 + 0.2 * 0.1) and b.ewma_ttft == 0.5


class _Recorder:
    """A policy that records the hooks the pool calls (same calls for every policy)."""

    name = "recorder"

    def __init__(self) -> None:
        self.events: list[tuple[str, str, object]] = []

    def choose(self, candidates, request):  # type: ignore[no-untyped-def]
        return min(candidates, key=lambda b: b.outstanding)

    def on_dispatch(self, backend, request):  # type: ignore[no-untyped-def]
        assert backend.outstanding >= 1  # counted before the hook runs
        self.events.append(("dispatch", backend.id, request))

    def on_complete(self, backend, request, completion):  # type: ignore[no-untyped-def]
        self.events.append(("complete", backend.id, completion))


def test_pool_calls_dispatch_and_complete_hooks_once_per_request_queued_or_not() -> None:
    from gateway.routing.request import Completion, RouteRequest

    async def run() -> None:
        rec = _Recorder()
        p = Pool("p", config.PoolConfig(endpoints=["http://h:1/v1"], max_concurrency=1), balancer=rec)  # type: ignore[arg-type]
        p.add(Backend(id="b0", pool="p", url="http://h:1/v1", max_concurrency=1))
        r1 = RouteRequest("chat", {"messages": []})
        r2 = RouteRequest("chat", {"messages": []})
        held = await p.acquire(r1)
        waiter = asyncio.ensure_future(p.acquire(r2))
        await asyncio.sleep(0)
        done = Completion(ok=True, prompt_tokens=100, cached_tokens=60, ttft=0.1, duration=0.5, output_tokens=5)
        p.release(held, r1, done)
        second = await waiter  # dispatched from the queue: its own request view
        p.release(second, r2, None)
        assert [(e[0], e[2]) for e in rec.events] == [
            ("dispatch", r1), ("complete", done), ("dispatch", r2), ("complete", None),
        ]
        b = p.backends[0]
        assert b.outstanding == 0 and b.cache.prompt_tokens == 100 and b.cache.cached_tokens == 60
        assert b.ewma_ttft == pytest.approx(0.1)  # speed estimates fed for every policy

    asyncio.run(run())
