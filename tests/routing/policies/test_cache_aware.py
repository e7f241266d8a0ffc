"""The cache_aware balancer: hits, the load bound, ageing, memory cap, replicas agreeing."""

from __future__ import annotations

from collections import Counter
from typing import Any

import pytest

from gateway.config import PrefixRoutingConfig
from gateway.routing.backend import Backend
from gateway.routing.policies import make_balancer
from gateway.routing.policies.cache_aware import CacheAware
from gateway.routing.request import Completion, RouteRequest

SYSTEM = {"role": "system", "content": "You are a helpful assistant. " * 30}


def backends(n: int = 4) -> list[Backend]:
    return [Backend(id=f"b{i}", pool="p", url=f"http://10.0.0.{i}:8000/v1", max_concurrency=64) for i in range(n)]


def conv(cid: int, turns: int) -> RouteRequest:
    msgs: list[dict[str, Any]] = [SYSTEM]
    for t in range(turns):
        msgs.append({"role": "user", "content": f"conversation {cid} question {t} " * 20})
        if t < turns - 1:
            msgs.append({"role": "assistant", "content": f"answer {t} " * 40})
    return RouteRequest("chat", {"model": "m", "messages": msgs}, block_bytes=128)


def policy(**kw: Any) -> CacheAware:
    return CacheAware(seed=1, cfg=PrefixRoutingConfig(block_bytes=128, **kw))


def send(p: CacheAware, bs: list[Backend], req: RouteRequest, done: bool = True) -> Backend:
    """What the pool does around a policy, minus the queue."""
    b = p.choose(bs, req)
    b.outstanding += 1
    p.on_dispatch(b, req)
    if done:
        b.outstanding -= 1
        p.on_complete(b, req, None)
    return b


def dispatch(p: CacheAware, b: Backend, req: RouteRequest) -> None:
    """The hooks of a request sent to `b` without asking the policy."""
    b.outstanding += 1
    p.on_dispatch(b, req)
    b.outstanding -= 1
    p.on_complete(b, req, None)


def test_every_turn_of_a_conversation_goes_back_to_its_backend() -> None:
    p, bs = policy(), backends()
    for cid in range(12):
        first = send(p, bs, conv(cid, 1))
        for t in range(2, 6):
            assert send(p, bs, conv(cid, t)) is first
    routed = Counter(r for b in bs for r, n in b.cache.routed.items() for _ in range(n))
    # Later turns: the cached history shortened the predicted TTFT there.
    assert routed["locality"] >= 12 * 4


def test_predicted_ttft_is_slot_wait_plus_backlog_plus_uncached_prefill() -> None:
    now = [0.0]
    cfg = PrefixRoutingConfig(block_bytes=128, prefill_ms_per_token=1.0)  # 1 ms per token
    p, bs = CacheAware(cfg=cfg, clock=lambda: now[0]), backends(2)
    for x in bs:
        x.engine_capacity = 4  # batch room: no slot wait in this test
    req = conv(1, 1)
    tokens = req.blocks.size / 4  # 4 bytes per token until usage says otherwise
    d = p.decide(bs, req)
    assert d.ttft == pytest.approx(tokens / 1000)  # idle, nothing cached: the whole prefill
    b = send(p, bs, req, done=False)
    # b now has the prompt cached but owes its prefill for `tokens / 1000` s (backlog).
    other = bs[1] if b is bs[0] else bs[0]
    follow = conv(1, 2)
    cached_tokens = p.index(b, 0.0).match(follow.blocks.hashes, 0.0) * 128 / 4
    all_tokens = follow.blocks.size / 4
    d = p.decide(bs, follow)
    scores = {s_b: t for s_b, t in _scores(p, bs, follow).items()}
    assert scores[other] == pytest.approx(all_tokens / 1000)
    assert scores[b] == pytest.approx(tokens / 1000 + (all_tokens - cached_tokens) / 1000)
    assert d.backend is min(scores, key=lambda k: scores[k])
    now[0] += 10  # the backlog is done
    assert _scores(p, bs, follow)[b] == pytest.approx((all_tokens - cached_tokens) / 1000)
    b.outstanding = 4  # a full batch: one more waits a quarter of a request's duration (1 s default)
    assert _scores(p, bs, follow)[b] == pytest.approx(0.25 + (all_tokens - cached_tokens) / 1000)


def _scores(p: CacheAware, bs: list[Backend], req: RouteRequest) -> dict[Backend, float]:
    return p.predictions(bs, req)


def test_a_hit_is_worth_exactly_the_prefill_it_saves() -> None:
    cfg = PrefixRoutingConfig(block_bytes=128, prefill_ms_per_token=1.0, balance_rel=10, balance_abs=10)
    p, bs = CacheAware(cfg=cfg), backends(2)
    for b in bs:
        b.engine_capacity = 1  # batch of one: a second request waits a whole request duration
    home = send(p, bs, conv(2, 1))
    away = bs[1] if home is bs[0] else bs[0]
    req = conv(2, 2)
    saved = p.index(home, 0.0).match(req.blocks.hashes, 0.0) * 128 / 4 / 1000  # seconds of prefill
    assert saved > 0.05
    home.outstanding = 1  # one request running there: the new one waits `duration`
    p._entries[home.id].duration = saved * 0.9  # waiting costs less than the prefill saved
    assert p.decide(bs, req).backend is home
    assert p.decide(bs, req).reason == "locality"
    p._entries[home.id].duration = saved * 1.1  # now the queue costs more than the hit saves
    assert p.decide(bs, req).backend is away


def test_prefill_backlog_steers_the_next_miss_elsewhere() -> None:
    cfg = PrefixRoutingConfig(block_bytes=128, prefill_ms_per_token=1.0)
    p, bs = CacheAware(cfg=cfg, clock=lambda: 0.0), backends(2)
    big = RouteRequest("chat", {"messages": [{"role": "user", "content": "long document " * 3000}]}, block_bytes=128)
    first = send(p, bs, big, done=False)  # ~10k tokens of prefill owed there
    small = RouteRequest("chat", {"messages": [{"role": "user", "content": "short question " * 50}]}, block_bytes=128)
    assert p.choose(bs, small) is not first


def test_overloaded_backend_is_skipped_despite_its_hit() -> None:
    p, bs = policy(balance_rel=0.25, balance_abs=2), backends()
    home = send(p, bs, conv(1, 1))
    home.outstanding = 10  # mean (10+0+0+0)/4 = 2.5 -> bound 1.25*2.5+2 = 5.1
    other = send(p, bs, conv(1, 2))
    assert other is not home
    assert home.cache.skipped_overloaded == 1
    home.outstanding = 4  # bound = 1.25*1+2 = 3.25: still over
    assert p.choose(bs, conv(1, 3)) is not home
    home.outstanding = 3  # within the bound, and no batch size known: queue of 3 -> `other` has it too
    assert p.choose(bs, conv(1, 3)) is other


def test_skew_one_hot_conversation_never_exceeds_the_bound() -> None:
    p, bs = policy(balance_rel=0.25, balance_abs=1), backends()
    for b in bs:
        b.engine_capacity = 64  # a big batch: the delay model alone would keep it all on one
    hot = conv(7, 3)
    for _ in range(400):  # requests that never finish: the load only grows
        send(p, bs, hot, done=False)
    loads = [b.outstanding for b in bs]
    mean = sum(loads) / 4
    assert max(loads) <= 1.25 * mean + 1 + 1


def test_new_conversations_spread_over_the_backends() -> None:
    # The shared system prompt, cached where the first one went, saves a little prefill
    # there: new conversations go there only while its queue costs less than that.
    p, bs = policy(), backends()
    for b in bs:
        b.engine_capacity = 8
    firsts = Counter(send(p, bs, conv(cid, 1), done=False).id for cid in range(200))
    assert len(firsts) == 4 and max(firsts.values()) <= 1.25 * 200 / 4 + 2


def test_unrelated_prompts_go_by_load_like_speed_aware() -> None:
    p, bs = policy(), backends()
    bs[0].outstanding, bs[1].outstanding, bs[2].outstanding, bs[3].outstanding = 3, 1, 2, 5
    req = RouteRequest("chat", {"messages": [{"role": "user", "content": "xyz " * 200}]}, block_bytes=128)
    assert p.choose(bs, req) is bs[1]
    assert p.decide(bs, req).reason == "load"
    assert p.choose(bs, None) is bs[1]  # no request view at all: load only


def test_prefill_price_is_learnt_from_ttfts() -> None:
    cfg = PrefixRoutingConfig(block_bytes=128, prefill_ms_per_token=0.1)
    p, bs = CacheAware(cfg=cfg), backends(2)
    b = bs[0]
    bs[1].outstanding = 5  # busier, so every request goes to b
    for cid in range(40):
        req = conv(cid, 1 + cid % 4)
        assert p.choose([b, bs[1]], req) is b  # decided with an idle batch: its TTFT is all prefill
        b.outstanding += 1
        p.on_dispatch(b, req)
        b.outstanding -= 1
        prompt = req.blocks.size // 4
        cached = (cid % 3) * 64
        # The engine: 20 ms + 2 ms per uncached token.
        p.on_complete(b, req, Completion(ok=True, prompt_tokens=prompt, cached_tokens=cached,
                                         ttft=0.02 + 0.002 * (prompt - cached), duration=1.0, output_tokens=10))
    assert p.prefill.seconds_per_token == pytest.approx(0.002, rel=0.01)


def test_two_replicas_sharing_records_agree() -> None:
    # Replica A routed turn 1; replica B sees turn 2 first and reads A's record.
    from gateway.routing.shared_routes import SharedRoutes

    class Store:  # the Redis client's two calls, in memory (the real one: test_shared_routes.py)
        def __init__(self) -> None:
            self.d: dict[str, str] = {}

        async def get(self, k: str) -> bytes | None:
            v = self.d.get(k)
            return v.encode() if v is not None else None

        async def set(self, k: str, v: str, ex: int) -> None:
            self.d[k] = v

    import asyncio

    async def run() -> int:
        store = Store()
        ra, rb = SharedRoutes("p", 600), SharedRoutes("p", 600)
        ra.attach(store)  # type: ignore[arg-type]
        rb.attach(store)  # type: ignore[arg-type]
        cfg = PrefixRoutingConfig(block_bytes=128)
        bs_a, bs_b = backends(), backends()  # each replica has its own view of the backends
        a, b = CacheAware(cfg=cfg, shared=ra), CacheAware(cfg=cfg, shared=rb)
        same = 0
        for cid in range(50):
            t1 = send(a, bs_a, conv(cid, 1))
            bs_a[bs_a.index(t1)].outstanding += 0
            for _ in range(3):
                await asyncio.sleep(0)  # the record's write task
            req = conv(cid, 2)
            w = b.prepare(req)
            assert w is not None  # a follow-up turn B never saw: it reads the record
            await w
            same += send(b, bs_b, req).url == t1.url
        assert b.prepare(conv(0, 1)) is None  # first turns have no record to read
        return same

    assert asyncio.run(run()) == 50


def test_aged_out_blocks_no_longer_attract() -> None:
    now = [100.0]
    p, bs = CacheAware(cfg=PrefixRoutingConfig(block_bytes=128, ttl=50), clock=lambda: now[0]), backends()
    home = send(p, bs, conv(3, 1))
    assert send(p, bs, conv(3, 2)) is home
    now[0] += 49
    assert p.decide(bs, conv(3, 3)).reason == "locality"
    now[0] += 2
    d = p.decide(bs, conv(3, 3))
    assert d.reason != "locality" or d.backend is not home


def test_memory_cap_from_engine_capacity() -> None:
    p, bs = policy(), backends(1)
    bs[0].kv_capacity_tokens = 4096  # x 4 bytes/token / 128 bytes = 128 blocks
    for cid in range(100):
        dispatch(p, bs[0], conv(cid, 3))
    idx = p.index(bs[0], 0.0)
    assert idx.max_blocks == 128 and len(idx) <= 128


def test_engine_reported_misses_shrink_the_index() -> None:
    p, bs = policy(), backends(1)
    b = bs[0]
    for cid in range(40):
        dispatch(p, b, conv(cid, 2))
    cap0 = p.index(b, 0.0).cap
    req = conv(1, 3)
    b.outstanding += 1
    p.on_dispatch(b, req)
    b.outstanding -= 1
    p.on_complete(b, req, Completion(ok=True, prompt_tokens=req.blocks.size // 4, cached_tokens=0))
    assert p.index(b, 0.0).cap < cap0


def test_a_restarted_engine_has_an_empty_cache() -> None:
    p, bs = policy(), backends(2)
    home = send(p, bs, conv(5, 1))
    send(p, bs, conv(5, 2))
    assert p.decide(bs, conv(5, 3)).reason == "locality"
    home.restarts += 1
    assert p.decide(bs, conv(5, 3)).reason != "locality"


def test_make_balancer_knows_cache_aware() -> None:
    assert make_balancer("cache_aware").name == "cache_aware"
    with pytest.raises(ValueError, match="cache_aware"):
        make_balancer("nope")


def test_a_lone_backend_costs_no_hashing() -> None:
    p, bs = policy(), backends(1)
    req = conv(1, 2)
    assert send(p, bs, req) is bs[0]
    assert "blocks" not in req.__dict__  # the cached_property was never computed
    assert bs[0].cache.routed == {}
