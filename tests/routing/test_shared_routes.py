"""Conversation -> backend records shared through a real redis-server, and two gateway
replicas on one Redis sending every turn of a conversation to the same engine."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import httpx

from gateway.routing.shared_routes import SharedRoutes
from gateway.sim.testing import SimProcess
from tests.gw import GatewayServer, wait_until
from tests.redis_server import RedisServer
from tests.routing.prefix_sims import SYSTEM, served


def client_for(url: str) -> Any:
    import redis.asyncio as aioredis

    return aioredis.Redis.from_url(url)


def test_a_record_written_by_one_replica_is_read_by_another(redis_server: RedisServer) -> None:
    async def run() -> None:
        ca, cb = client_for(redis_server.url), client_for(redis_server.url)
        a, b = SharedRoutes("chat", ttl=30), SharedRoutes("chat", ttl=30)
        a.attach(ca)
        b.attach(cb)
        try:
            assert await b.fetch(0xABC) is None  # nothing recorded yet
            a.record(0xABC, "http://10.0.0.2:8000/v1", 17)
            await asyncio.gather(*a._writes)
            r = await b.fetch(0xABC)
            assert r is not None and r.url == "http://10.0.0.2:8000/v1" and r.blocks == 17
            assert b.stats.reads == 2 and b.stats.found == 1
            # Bounded: the key expires after the records' ttl.
            ttl = await ca.ttl("gw:route:{chat}:0000000000000abc")
            assert 0 < ttl <= 30
            # Read through the local cache: no second GET within local_ttl.
            assert await b.fetch(0xABC) is not None and b.stats.reads == 2
        finally:
            await a.close()
            await ca.aclose()
            await cb.aclose()

    asyncio.run(run())


def test_redis_down_costs_at_most_the_timeout(redis_server: RedisServer) -> None:
    async def run() -> None:
        c = client_for(redis_server.url)
        s = SharedRoutes("chat", ttl=30, timeout=0.05)
        s.attach(c)
        try:
            redis_server.stop()
            t0 = time.monotonic()
            assert await s.fetch(0x1) is None
            assert time.monotonic() - t0 < 1.0  # the connect is refused or times out: routed without it
            assert s.stats.failed == 1
            s.record(0x1, "http://x/v1", 3)  # a failed write is counted, never raised
            await asyncio.gather(*s._writes)
            assert s.stats.failed == 2
        finally:
            await c.aclose()

    asyncio.run(run())


def gateway_yaml(sims: list[SimProcess], redis_url: str) -> str:
    urls = ", ".join(s.base_url for s in sims)
    return f"""
auth: {{mode: none}}
store: memory://
redis: "{redis_url}"
engines: {{endpoint_health: {{interval: 5, metrics_interval: 0.1}}}}
pools:
  m:
    endpoints: [{urls}]
    balancer: cache_aware
    prefix_routing: {{block_bytes: 256}}
"""


def which(before: list[int], after: list[int]) -> int:
    diff = [a - b for a, b in zip(after, before, strict=True)]
    assert sum(diff) == 1, diff
    return diff.index(1)


def test_two_gateways_on_one_redis_send_each_conversation_to_one_engine(
    sims: list[SimProcess], redis_server: RedisServer
) -> None:
    yaml = gateway_yaml(sims, redis_server.url)
    with GatewayServer(yaml) as g1, GatewayServer(yaml) as g2, \
            httpx.Client(base_url=g1.url, timeout=30) as c1, httpx.Client(base_url=g2.url, timeout=30) as c2:
        clients = [c1, c2]
        for cid in range(8):
            history: list[dict[str, Any]] = []
            home = -1
            for t in range(4):
                # Turns alternate between the replicas, starting on either one.
                client = clients[(cid + t) % 2]
                history.append({"role": "user", "content": f"Conversation {cid}, question {t}: why? " * 8})
                before = served(sims)
                r = client.post("/v1/chat/completions",
                                json={"model": "m", "messages": [SYSTEM, *history], "max_tokens": 8})
                assert r.status_code == 200, r.text
                body = r.json()
                engine = which(before, served(sims))
                if t == 0:
                    home = engine
                else:
                    assert engine == home, f"conversation {cid} turn {t} via replica {(cid + t) % 2}"
                    usage = body["usage"]
                    assert usage["prompt_tokens_details"]["cached_tokens"] >= usage["prompt_tokens"] // 2
                history.append({"role": "assistant", "content": body["choices"][0]["message"]["content"]})
        # Each replica read records the other wrote (a follow-up it had not routed itself).
        for g in (g1, g2):
            stats = g.state.pools["m"].shared_routes.stats
            assert stats.found >= 1 and stats.failed == 0
        assert wait_until(lambda: all(g.state.pools["m"].shared_routes.stats.writes >= 8 for g in (g1, g2)), 5)
