"""Unit tests of the hot path's pure pieces: keys, SSE framing, header rules, pools, balancers."""

from __future__ import annotations

import asyncio
import concurrent.futures as cf
import time
from collections.abc import Iterator
from typing import Any

import openai
import pytest

from gateway import config
from gateway.errors import GatewayError
from gateway.keys.auth import KeyRing, hash_key
from gateway.routing.backend import Backend, BackendState
from gateway.routing.pool import Pool
from gateway.sim.testing import SimProcess
from tests.gw import CLIENT_KEY, GatewayServer, auth_yaml, wait_until


def ring() -> KeyRing:
    cfg = config.AuthConfig(
        admin_key="adm",
        keys=[config.KeyConfig(name="a", key_sha256=hash_key("sk-a"), models=["qwen*"])],
    )
    return KeyRing.from_config(cfg)


















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


def test_pool_queue_holds_requests_then_429_when_full() -> None:
    with SimProcess(["--served-model-name", "m", "--ttft-ms", "1", "--itl-ms", "30"]) as sim:
        cfg = auth_yaml() + f"""
store: "memory://"
pools:
  m: {{endpoints: [{sim.base_url}], max_concurrency: 1, queue: {{max_size: 1, timeout: 10}}}}
"""
        with GatewayServer(cfg) as gw:
            c = client(gw)
            pool = gw.state.pools["m"]

            def one(_: int) -> str:
                r = c.chat.completions.create(model="m", messages=[{"role": "user", "content": "x"}], max_tokens=10)
                return r.choices[0].finish_reason

            with cf.ThreadPoolExecutor(2) as ex:
                first = ex.submit(one, 0)
                assert wait_until(lambda: pool.outstanding == 1, 2)
                second = ex.submit(one, 1)
                assert wait_until(lambda: pool.queued == 1, 2)
                # The engine never sees more than max_concurrency from us...
                assert sim.metrics().get("vllm:num_requests_running", 0) <= 1
                # ...and with the queue full, the next request is turned away at once.
                t0 = time.monotonic()
                with pytest.raises(openai.RateLimitError) as e:
                    one(2)
                assert time.monotonic() - t0 < 0.5
                assert e.value.response.headers["retry-after"] == "1"
                assert e.value.body["code"] == "pool_queue_full"  # type: ignore[index]
                assert first.result(10) == "length" and second.result(10) == "length"
            assert wait_until(lambda: pool.outstanding == 0 and pool.queued == 0, 1)


class _Recorder:
    """A policy that records the hooks the pool calls (same calls for every policy)."""

    name = "recorder"

    def __init__(self) -> None:
        self.events: list[tuple[str, str, object]] = []

    def prepare(self, request):  # type: ignore[no-untyped-def]
        self.events.append(("prepare", "", request))

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
            ("prepare", r1), ("dispatch", r1), ("prepare", r2), ("complete", done), ("dispatch", r2),
            ("complete", None),
        ]
        b = p.backends[0]
        assert b.outstanding == 0 and b.cache.prompt_tokens == 100 and b.cache.cached_tokens == 60
        assert b.ewma_ttft == pytest.approx(0.1)  # speed estimates fed for every policy

    asyncio.run(run())
