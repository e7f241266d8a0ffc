"""Forwarding: retries onto another backend, the slot released on every path, balancer feedback."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from typing import Any

import openai
import orjson
import pytest

from gateway.config import PoolConfig
from gateway.context import RequestContext
from gateway.errors import GatewayError
from gateway.proxy.client import make_session
from gateway.proxy.forward import forward
from gateway.proxy.plan import make_plan
from gateway.routing.backend import Backend
from gateway.routing.pool import Pool, endpoint_backends
from gateway.server.asgi import AsgiExchange
from gateway.sim.testing import SimProcess, free_port
from tests.gw import CLIENT_KEY, GatewayServer, auth_yaml, wait_until

FAST = ["--ttft-ms", "1", "--itl-ms", "1", "--max-num-seqs", "64"]


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


def _two_endpoints(first: str, second: str) -> str:
    """A gateway config with one pool `m` over two endpoints, taken in turn."""
    return auth_yaml() + f"""
store: "memory://"
pools:
  m: {{endpoints: [{first}, {second}], balancer: round_robin}}
"""


def test_retry_onto_a_healthy_backend_when_one_is_down() -> None:
    dead = f"http://127.0.0.1:{free_port()}/v1"
    with SimProcess(["--served-model-name", "m", *FAST]) as sim:
        with GatewayServer(_two_endpoints(dead, sim.base_url)) as gw:
            c = client(gw)
            for _ in range(6):
                r = c.chat.completions.create(model="m", messages=[{"role": "user", "content": "x"}], max_tokens=2)
                assert r.choices[0].message.content
            dead_backend = gw.state.pools["m"].backends[0]
            assert dead_backend.last_error is not None
            assert not dead_backend.routable  # passive health: refused connections take it out at once
            # The client has the last byte a moment before the gateway's `finally` releases.
            assert wait_until(lambda: gw.state.pools["m"].outstanding == 0, 1)


def test_forced_503_is_retried_elsewhere_and_500_is_not() -> None:
    with SimProcess(["--served-model-name", "m", *FAST, "--fault-error-rate", "1", "--fault-error-status", "503"]) as bad, \
         SimProcess(["--served-model-name", "m", *FAST]) as good:
        with GatewayServer(_two_endpoints(bad.base_url, good.base_url)) as gw:
            c = client(gw)
            for _ in range(4):
                c.chat.completions.create(model="m", messages=[{"role": "user", "content": "x"}], max_tokens=2)
            with pytest.raises(openai.InternalServerError) as e:
                c.chat.completions.create(model="m", messages=[{"role": "user", "content": "x"}], max_tokens=2,
                                          extra_headers={"x-sim-force-status": "500"})
            assert e.value.status_code == 500


def test_an_engine_whose_core_died_is_skipped_and_taken_out() -> None:
    # vLLM with a dead EngineCore answers 500 "EngineCore encountered an issue" to every
    # request until it exits (met on real vLLM: a restarted replica's worker died on its
    # first request). Unlike an ordinary 500, that says nothing about the request.
    with SimProcess(["--served-model-name", "m", *FAST, "--fault-engine-dead"]) as dead, \
         SimProcess(["--served-model-name", "m", *FAST]) as good:
        with GatewayServer(_two_endpoints(dead.base_url, good.base_url)) as gw:
            c = client(gw)
            for stream in (False, True, False):
                r = c.chat.completions.create(model="m", messages=[{"role": "user", "content": "x"}], max_tokens=2,
                                              stream=stream)
                if stream:
                    assert "".join(ch.choices[0].delta.content or "" for ch in r if ch.choices)  # type: ignore[union-attr]
                else:
                    assert r.choices[0].message.content  # type: ignore[union-attr]
            dead_backend = next(b for b in gw.state.pools["m"].backends if b.url.startswith(dead.base_url))
            assert not dead_backend.routable and "engine died" in (dead_backend.last_error or "")
            assert dead.metrics()["vllm:request_success_total"] == 0  # it never served one


def _pool(url: str) -> Pool:
    cfg = PoolConfig.model_validate({"endpoints": [url], "retries": 0})
    pool = Pool("m", cfg)
    for b in endpoint_backends("m", cfg):
        pool.add(b)
    return pool


def _exchange(send: Any) -> AsgiExchange:
    async def receive() -> dict[str, Any]:
        await asyncio.Event().wait()
        raise AssertionError("unreachable")

    return AsgiExchange({"method": "POST", "path": "/v1/completions", "headers": []}, receive, send)


def _forward_once(sim_url: str, body: dict[str, Any], stream: bool) -> tuple[Backend, list[dict[str, Any]]]:
    async def main() -> tuple[Backend, list[dict[str, Any]]]:
        pool = _pool(sim_url)
        [backend] = pool.backends
        ctx = RequestContext(request_id="r", endpoint="completions", stream=stream, model_requested="m")
        raw = orjson.dumps(body)
        plan = make_plan(ctx, pool, raw, orjson.loads(raw), "/completions", [])
        sent: list[dict[str, Any]] = []

        async def send(msg: dict[str, Any]) -> None:
            sent.append(msg)

        session = make_session("raw")
        try:
            await forward(session, pool, ctx, plan, _exchange(send))
        finally:
            await session.close()
        assert ctx.completed and backend.outstanding == 0
        return backend, sent

    return asyncio.run(main())


def test_a_completed_answer_feeds_the_balancer_where_the_slot_is_released() -> None:
    with SimProcess(["--served-model-name", "m", "--ttft-ms", "20", "--itl-ms", "5"]) as sim:
        b, sent = _forward_once(sim.base_url, {"model": "m", "prompt": "x", "max_tokens": 16}, stream=False)
        assert sent[0]["status"] == 200
        # Non-stream: a per-token rate from the whole duration (16 tokens: long enough to
        # amortise the prefill), no time to first token.
        assert b.ewma_tpot is not None and b.ewma_ttft is None
        b, sent = _forward_once(sim.base_url, {"model": "m", "prompt": "x", "max_tokens": 8, "stream": True}, stream=True)
        assert b.ewma_ttft is not None and b.ewma_ttft >= 0.02 and b.ewma_tpot is not None


def test_an_unreachable_backend_is_not_observed_and_sits_out() -> None:
    async def main() -> Backend:
        pool = _pool(f"http://127.0.0.1:{free_port()}/v1")
        [backend] = pool.backends
        ctx = RequestContext(request_id="r", endpoint="completions", model_requested="m")
        plan = make_plan(ctx, pool, b'{"model":"m"}', {"model": "m"}, "/completions", [])

        async def send(msg: dict[str, Any]) -> None:
            raise AssertionError("nothing may reach the client")

        session = make_session("raw")
        try:
            with pytest.raises(GatewayError) as e:
                await forward(session, pool, ctx, plan, _exchange(send))
            assert e.value.status == 502
        finally:
            await session.close()
        assert backend.outstanding == 0
        return backend

    b = asyncio.run(main())
    assert (b.ewma_tpot, b.ewma_ttft) == (None, None) and not b.routable


def test_a_stream_held_back_by_its_client_teaches_no_speed() -> None:
    # The relay waited for a slow client: the stream's duration is the client's, so the
    # balancer gets no duration (no rate learnt); its TTFT came before any wait and stands.
    from gateway.proxy.forward import _completion

    ctx = RequestContext(request_id="r", endpoint="chat")
    ctx.stream, ctx.completed = True, True
    ctx.upstream_started = ctx.started
    ctx.first_byte_at = ctx.started + 0.05
    ctx.usage = {"prompt_tokens": 10, "completion_tokens": 200}
    free = _completion(ctx)
    held = _completion(ctx, held_back=True)
    assert free.duration > 0.0 and held.duration == 0.0
    assert held.ttft == free.ttft == pytest.approx(0.05)
    b = Backend(id="b", pool="p", url="http://127.0.0.1:1/v1", max_concurrency=1)
    b.observe(held.ttft, held.duration, held.output_tokens)
    assert b.ewma_ttft == pytest.approx(0.05) and b.ewma_tpot is None
