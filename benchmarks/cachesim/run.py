"""Issue #15's comparison in simulated time: the gateway's own balancers (the classes the
gateway runs, fed as its pool feeds them) in front of GPU-like engines (`engine.py`).

Why simulated time: the wall-clock scenario (`scenarios/cache_aware.py`) can only drive
4 tiny engines with ~20 conversations for 14 s on this shared 2-core machine, so its
KV caches, prompt sizes and think times had to be shrunk far from any real deployment,
and its figures moved by tens of percent between runs. Here a run is deterministic
(same seeds: same sessions, same figures), minutes of traffic take seconds, and engine
and workload can be sized like production: 4 replicas of an 8B model on 80 GB GPUs,
hundreds of live conversations, 20 s think times.

What runs for real: `CacheAware`, `SpeedAware`, `LeastOutstanding`, `RoundRobin` from
gateway.routing.policies, `RouteRequest` hashing the real chat bodies, `Backend.observe`,
`SharedRoutes` (with an in-memory stand-in for Redis: GET/SET only; the real client is
tested in tests/routing/test_shared_routes.py). What is modelled: the engines, the
network (0 s), the gateway's scrape of engine gauges (every 1 s, as configured by
default), and each gateway replica's own view of the backends (its own in-flight counts).
The oracle knows every engine's exact cache and queue and picks the least TTFT.
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
import math
import random
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from gateway.config import PrefixRoutingConfig
from gateway.routing.backend import Backend
from gateway.routing.policies import Balancer, make_balancer
from gateway.routing.request import Completion, RouteRequest
from gateway.routing.shared_routes import SharedRoutes

from .engine import Engine, EngineSpec, Seq
from .workload import Session

SCRAPE_S = 1.0  # engines.endpoint_health.metrics_interval's default
POLICIES = ("cache_aware", "speed_aware", "least_outstanding", "round_robin", "oracle")


class MemoryRedis:
    """GET and SET of redis.asyncio, in memory and instant, shared by the replicas."""

    def __init__(self) -> None:
        self.d: dict[str, str] = {}

    async def get(self, k: str) -> bytes | None:
        v = self.d.get(k)
        return v.encode() if v is not None else None

    async def set(self, k: str, v: str, ex: int) -> None:
        self.d[k] = v


@dataclass
class Sample:
    arrive: float
    ttft: float
    e2e: float
    prompt: int
    cached: int
    engine: int


@dataclass
class Sim:
    now: float = 0.0
    events: list[tuple[float, int, Callable[[], Any]]] = field(default_factory=list)
    _n: itertools.count[int] = field(default_factory=itertools.count)

    def at(self, t: float, fn: Callable[[], Any]) -> None:
        heapq.heappush(self.events, (t, next(self._n), fn))


class Replica:
    """One gateway: its balancer and its own view of the backends."""

    def __init__(self, policy: str, engines: list[Engine], sim: Sim, seed: int, shared: MemoryRedis | None) -> None:
        self.backends = [Backend(id=f"e{i}", pool="m", url=f"http://10.0.0.{i}:8000/v1", max_concurrency=10**6)
                         for i in range(len(engines))]
        for b, e in zip(self.backends, engines, strict=True):
            b.kv_capacity_tokens = e.spec.kv_tokens  # vllm:cache_config_info
        cfg = PrefixRoutingConfig()
        routes = SharedRoutes("m", cfg.ttl, cfg.shared_local_ttl, cfg.shared_timeout, clock=lambda: sim.now)
        if shared is not None:
            routes.attach(shared)  # type: ignore[arg-type]
        self.balancer: Balancer = make_balancer(policy, seed=seed, prefix=cfg, shared=routes)
        if hasattr(self.balancer, "clock"):
            self.balancer.clock = lambda: sim.now  # type: ignore[attr-defined]

    def scrape(self, engines: list[Engine]) -> None:
        for b, e in zip(self.backends, engines, strict=True):
            b.engine_running, b.engine_waiting = float(e.running), float(len(e.waiting))


def oracle_pick(engines: list[Engine], s: Session, t: int, durations: list[float]) -> int:
    """Least TTFT knowing each engine's exact cache and queue."""
    turn = s.turns[t]
    hashes = s.prompt_hashes(t)

    def ttft(i: int) -> float:
        e = engines[i]
        sp = e.spec
        cached = e.kv.cached_prefix_blocks(hashes, turn.prompt_len) * e.kv.block_size
        work = e.queued_prefill_tokens + turn.prompt_len - cached
        per_step = max(1, sp.max_batched_tokens - len(e.decoding))
        steps = math.ceil(work / per_step)
        step_s = sp.step_base_s + sp.kv_read_s_per_token * e.context_tokens + sp.prefill_s_per_token * min(work, per_step)
        beyond = e.running + len(e.waiting) + 1 - sp.max_num_seqs
        wait = durations[i] * beyond / sp.max_num_seqs if beyond > 0 else 0.0
        return wait + steps * step_s

    return min(range(len(engines)), key=ttft)


async def simulate(sessions: list[Session], policy: str, replicas: int, spec: EngineSpec, n_engines: int,
                   seed: int, measure_from: float, closed_loop_until: float | None = None) -> list[Sample]:
    """Run every session (turns in order, think time between); a closed loop (capacity)
    restarts each session at once until `closed_loop_until`."""
    sim = Sim()
    engines = [Engine(spec, sim.at) for _ in range(n_engines)]
    shared = MemoryRedis() if policy == "cache_aware" and replicas > 1 else None
    gws = [Replica(policy if policy != "oracle" else "round_robin", engines, sim, seed + i, shared)
           for i in range(replicas)]
    rng = random.Random(seed)
    samples: list[Sample] = []
    durations = [1.0] * n_engines  # the oracle's view of request durations

    def scrape() -> None:
        for g in gws:
            g.scrape(engines)
        if sim.events:
            sim.at(sim.now + SCRAPE_S, scrape)

    async def send(s: Session, t: int) -> None:
        turn = s.turns[t]
        arrive = sim.now
        g = gws[rng.randrange(replicas)]
        req = RouteRequest("chat", turn.body)
        if policy == "oracle":
            i = oracle_pick(engines, s, t, durations)
            b = g.backends[i]
        else:
            pending = g.balancer.prepare(req)
            if pending is not None:
                await pending
            b = g.balancer.choose(g.backends, req)
            i = g.backends.index(b)
        b.outstanding += 1
        g.balancer.on_dispatch(b, req)
        first: list[float] = []

        def on_first(now: float, cached: int) -> None:
            first.append(now)

        def on_done(now: float) -> None:
            b.outstanding -= 1
            ttft = first[0] - arrive
            c = Completion(ok=True, prompt_tokens=turn.prompt_len, cached_tokens=seq.cached, ttft=ttft,
                           duration=now - arrive, output_tokens=turn.out_len)
            b.observe(c.ttft, c.duration, c.output_tokens)
            g.balancer.on_complete(b, req, c)
            durations[i] = 0.9 * durations[i] + 0.1 * (now - arrive)
            if arrive >= measure_from:
                samples.append(Sample(arrive, ttft, now - arrive, turn.prompt_len, seq.cached, i))
            if t + 1 < len(s.turns):
                sim.at(now + turn.think, lambda: send(s, t + 1))
            elif closed_loop_until is not None and now < closed_loop_until:
                sim.at(now, lambda: send(s, 0))

        seq = Seq(turn.prompt_len, turn.out_len, s.prompt_hashes(t), s.output_hashes(t), on_first, on_done)
        engines[i].submit(seq, sim.now)

    for s in sessions:
        sim.at(s.start, lambda s=s: send(s, 0))  # type: ignore[misc]
    sim.at(0.0, scrape)
    while sim.events:
        t, _, fn = heapq.heappop(sim.events)
        sim.now = t
        r = fn()
        if asyncio.iscoroutine(r):
            await r
            await asyncio.sleep(0)  # shared-record writes land before the next event
    return samples


def summarize(samples: list[Sample], n_engines: int) -> dict[str, Any]:
    ttft = sorted(x.ttft for x in samples)
    e2e = sorted(x.e2e for x in samples)
    share = [0] * n_engines
    for x in samples:
        share[x.engine] += 1
    mean_share = sum(share) / n_engines if samples else 0.0

    def pct(v: list[float], p: float) -> float:
        return v[min(len(v) - 1, int(round(p / 100 * (len(v) - 1))))] if v else math.nan

    return {
        "n": len(samples),
        "ttft_mean_s": sum(ttft) / len(ttft) if ttft else math.nan, "ttft_p99_s": pct(ttft, 99),
        "e2e_mean_s": sum(e2e) / len(e2e) if e2e else math.nan, "e2e_p99_s": pct(e2e, 99),
        "hit_rate": sum(x.cached for x in samples) / max(1, sum(x.prompt for x in samples)),
        "share": share, "spread": max(share) / mean_share if mean_share else 0.0,
    }
