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


def test_every_turn_of_a_conversation_goes_back_to_its_backend() -> None:
    p, bs = policy(), backends()
    for cid in range(12):
        first = send(p, bs, conv(cid, 1))
        for t in range(2, 6):
            assert send(p, bs, conv(cid, t)) is first
    routed = Counter(r for b in bs for r, n in b.cache.routed.items() for _ in range(n))
    # Turn 1 by the rendezvous hash of its opening (or load, the very first), the rest by
    # the opening's hash recorded in the index, then by the blocks reaching past it.
    assert routed["locality"] == 12 * 4
    assert routed["affinity"] + routed["load"] == 12


def test_new_conversations_spread_over_the_backends() -> None:
    p, bs = policy(), backends()
    firsts = Counter(send(p, bs, conv(cid, 1)).id for cid in range(200))
    assert len(firsts) == 4 and max(firsts.values()) < 2 * 200 / 4


def test_overloaded_backend_is_skipped_despite_its_hit() -> None:
    p, bs = policy(balance_rel=0.25, balance_abs=2), backends()
    home = send(p, bs, conv(1, 1))
    home.outstanding = 10  # mean (10+0+0+0)/4 = 2.5 -> bound 1.25*2.5+2 = 5.1
    other = send(p, bs, conv(1, 2))
    assert other is not home
    assert home.cache.skipped_overloaded == 1
    home.outstanding = 4  # bound = 1.25*1+2 = 3.25: still over
    assert p.choose(bs, conv(1, 3)) is not home
    home.outstanding = 3  # within the bound: the longest prefix wins again... which is now `other`'s
    assert p.choose(bs, conv(1, 3)) is other


def test_skew_one_hot_conversation_never_exceeds_the_bound() -> None:
    p, bs = policy(balance_rel=0.25, balance_abs=1), backends()
    hot = conv(7, 3)
    for _ in range(400):  # requests that never finish: the load only grows
        send(p, bs, hot, done=False)
    loads = [b.outstanding for b in bs]
    mean = sum(loads) / 4
    assert max(loads) <= 1.25 * mean + 1 + 1


def test_prefix_shared_by_everyone_does_not_attract_new_conversations() -> None:
    # The system prompt is cached on b0 only; a new conversation must not herd there.
    p, bs = policy(), backends()
    send(p, bs, conv(0, 1))
    firsts = Counter(send(p, bs, conv(cid, 1)).id for cid in range(1, 100))
    assert len(firsts) == 4


def test_unrelated_prompts_go_by_load_like_speed_aware() -> None:
    p, bs = policy(), backends()
    bs[0].outstanding, bs[1].outstanding, bs[2].outstanding, bs[3].outstanding = 3, 1, 2, 5
    req = RouteRequest("chat", {"messages": [{"role": "user", "content": "xyz " * 200}]}, block_bytes=128)
    assert p.choose(bs, req) is bs[1]
    assert p.decide(bs, req).reason == "load"
    assert p.choose(bs, None) is bs[1]  # no request view at all: load only


def test_two_replicas_agree_without_sharing_anything() -> None:
    # Replica A saw turn 1; replica B sees turn 2 first: both send it to the same backend.
    bs = backends()
    a, b = policy(), policy()
    warm = conv(999, 1)  # both replicas have seen the shared system prompt somewhere
    send(a, bs, warm)
    send(b, bs, warm)
    same = 0
    for cid in range(50):
        t1 = send(a, bs, conv(cid, 1))
        same += send(b, bs, conv(cid, 2)) is t1
    assert same == 50


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
        send(p, bs, conv(cid, 3))
    idx = p.index(bs[0], 0.0)
    assert idx.max_blocks == 128 and len(idx) <= 128


def test_engine_reported_misses_shrink_the_index() -> None:
    p, bs = policy(), backends(1)
    b = bs[0]
    for cid in range(40):
        send(p, bs, conv(cid, 2))
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
