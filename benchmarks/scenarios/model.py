"""A discrete-event model of the balancing scenario, running the gateway's real policies.

Same engines (ITL 10/15/25/40 ms, batch 8, FIFO beyond it), same workload generator and
loads as scenario 3, but simulated, so many seeds run in seconds and the policies can be
compared without machine noise. The policies are the gateway's own classes from
`gateway.routing.policies`, fed `gateway.routing.backend.Backend` objects whose `observe()` runs on
every simulated completion, exactly as in the gateway. It also answers what cannot be
measured cheaply: how much knowing the batch size is worth, what happens when it is
inferred from live gauges (herding), and how far a non-clairvoyant policy can get
(an oracle that knows the engines' exact state but not the new request's length).
"""

from __future__ import annotations

import heapq
import math
import random
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from gateway.routing.backend import Backend
from gateway.routing.policies import make_balancer
from gateway.routing.policies.speed_aware import REFERENCE_TOKENS, engine_capacity

from ..context import Bench
from ..loadgen import mean, percentile
from .balancing import BATCH, ITLS_MS

Policy = Callable[[list[Backend], tuple[int, int], float], Backend]


@dataclass
class _Engine:
    itl: float
    batch: int = BATCH
    running: dict[int, float] = field(default_factory=dict)  # request -> finish time
    queue: list[int] = field(default_factory=list)

    def ttft(self, prompt: int) -> float:
        return 2 * self.itl + self.itl / 500 * prompt

    def service(self, prompt: int, out: int) -> float:
        return self.ttft(prompt) + self.itl * (out - 1)


def workload(n: int, seed: int, load: float) -> tuple[list[tuple[int, int]], list[float]]:
    """Same distributions as workload.job_mix (prompt tokens ~ words), Poisson arrivals."""
    rng = random.Random(seed)
    jobs = [(int(min(2000, max(16, rng.lognormvariate(math.log(300), 0.8)))),
             int(min(200, max(8, rng.lognormvariate(math.log(60), 0.6))))) for _ in range(n)]
    engines = [_Engine(i / 1000) for i in ITLS_MS]
    cap = sum(e.batch / mean([e.service(p, t) for p, t in jobs]) for e in engines)
    t, arrivals = 0.0, []
    for _ in range(n):
        t += rng.expovariate(load * cap)
        arrivals.append(t)
    return jobs, arrivals


def simulate(policy: Policy | str, jobs: list[tuple[int, int]], arrivals: list[float], scrape: float = 0.0,
             capacity: str = "none", workers: int = 1) -> dict[str, float]:
    """capacity: none | known (engine_capacity = batch) | live (running, while waiting > 0,
    else unset: unstable) | learned (most running seen while waiting: what a /metrics scraper could learn).
    workers: gateway processes behind SO_REUSEPORT; each request lands on one at random and
    each has its own Backend objects (its own outstanding counts and speed estimates)."""
    engines = [_Engine(i / 1000) for i in ITLS_MS]
    views = [[Backend(id=f"b{i}", pool="p", url="", max_concurrency=64) for i in range(len(engines))]
             for _ in range(workers)]
    pick_worker = random.Random(99)
    owner: dict[int, int] = {}
    if capacity == "known":
        for b in (b for v in views for b in v):
            b.engine_capacity = BATCH
    events: list[tuple[float, int, int, int]] = [(a, 0, i, -1) for i, a in enumerate(arrivals)]
    heapq.heapify(events)
    if scrape:
        heapq.heappush(events, (0.0, 3, -1, -1))
    n = len(jobs)
    start = [0.0] * n
    first = [0.0] * n
    lat: list[float] = [0.0] * n
    done = 0

    def begin(k: int, i: int, now: float) -> None:
        e = engines[k]
        p, t = jobs[i]
        e.running[i] = now + e.service(p, t)
        heapq.heappush(events, (now + e.ttft(p), 1, i, k))
        heapq.heappush(events, (e.running[i], 2, i, k))

    def oracle(clairvoyant: bool, job: tuple[int, int], now: float) -> int:
        best, best_t = 0, math.inf
        for k, e in enumerate(engines):
            slots = sorted(e.running.values())[: e.batch]
            slots += [now] * (e.batch - len(slots))
            heapq.heapify(slots)
            for i in e.queue:
                heapq.heappush(slots, max(heapq.heappop(slots), now) + e.service(*jobs[i]))
            s = e.service(*job) if clairvoyant else e.service(300, 66)
            f = max(heapq.heappop(slots), now) + s
            if f < best_t:
                best, best_t = k, f
        return best

    while done < n:
        now, kind, i, k = heapq.heappop(events)
        if kind == 0:
            start[i] = now
            w = owner[i] = pick_worker.randrange(workers)
            backends = views[w]
            if policy in ("oracle", "oracle_state"):
                k = oracle(policy == "oracle", jobs[i], now)
            else:
                cands = [b for b in backends if b.has_capacity]
                assert callable(policy)
                k = backends.index(policy(cands, jobs[i], now))
            backends[k].outstanding += 1
            e = engines[k]
            if len(e.running) < e.batch:
                begin(k, i, now)
            else:
                e.queue.append(i)
        elif kind == 1:
            first[i] = now
        elif kind == 2:
            e = engines[k]
            del e.running[i]
            b = views[owner[i]][k]
            b.outstanding -= 1
            lat[i] = now - start[i]
            b.observe(first[i] - start[i], now - start[i], jobs[i][1])
            done += 1
            if e.queue:
                begin(k, e.queue.pop(0), now)
        else:  # a /metrics scrape of every engine
            for v in views:
                for e, b in zip(engines, v, strict=True):
                    b.engine_running, b.engine_waiting = float(len(e.running)), float(len(e.queue))
                    if capacity == "live":
                        if e.queue:
                            b.engine_capacity = len(e.running)
                        else:
                            b.engine_capacity = None
                    elif capacity == "learned" and e.queue:
                        b.engine_capacity = max(len(e.running), b.engine_capacity or 0)
            heapq.heappush(events, (now + scrape, 3, -1, -1))
    ttft = [f - s for f, s in zip(first, start, strict=True)]
    return {"mean_s": mean(lat), "p99_s": percentile(lat, 99), "ttft_p99_s": percentile(ttft, 99)}


def _gateway_policy(name: str, seed: int) -> Policy:
    if name == "speed_aware_hint":
        return _length_hint
    bal = make_balancer(name, seed=seed)
    return lambda cands, job, now: bal.choose(cands)


def _length_hint(cands: list[Backend], job: tuple[int, int], now: float) -> Backend:
    """speed_aware's estimate, with this request's own length (max_tokens) for its service
    time: what `choose(candidates, hint)` could do if the proxy passed the request in."""
    tpot = min((b.ewma_tpot for b in cands if b.ewma_tpot is not None), default=0.0)

    def cost(b: Backend) -> float:
        per_token = b.ewma_tpot if b.ewma_tpot is not None else tpot
        typical = REFERENCE_TOKENS * per_token
        cap = engine_capacity(b) or 1
        wait = typical * max(0.0, max(b.outstanding, b.engine_running + b.engine_waiting) + 1 - cap) / cap
        return wait + job[1] * per_token

    return min(cands, key=cost)


CASES: list[tuple[str, str, float, str, int]] = [
    # (label, policy, scrape interval, capacity knowledge, gateway workers)
    ("round_robin", "round_robin", 0.0, "none", 1),
    ("random", "random", 0.0, "none", 1),
    ("least_outstanding", "least_outstanding", 0.0, "none", 1),
    ("least_outstanding, 4 workers (SO_REUSEPORT)", "least_outstanding", 0.0, "none", 4),
    ("speed_aware (batch unknown)", "speed_aware", 0.0, "none", 1),
    ("speed_aware, 4 workers", "speed_aware", 0.0, "none", 4),
    ("speed_aware, 4 workers + /metrics (250 ms)", "speed_aware", 0.25, "learned", 4),
    ("speed_aware + batch learned from /metrics (250 ms)", "speed_aware", 0.25, "learned", 1),
    ("speed_aware + batch known", "speed_aware", 0.0, "known", 1),
    ("speed_aware + batch from live gauges (unstable)", "speed_aware", 0.25, "live", 1),
    ("speed_aware + batch known + the request's max_tokens", "speed_aware_hint", 0.0, "known", 1),
    ("oracle, state only (not the request's length)", "oracle_state", 0.0, "none", 1),
    ("oracle (clairvoyant, as in scenario 3)", "oracle", 0.0, "none", 1),
]


def run(bench: Bench) -> dict[str, Any]:
    seeds = bench.pick((1, 2), (1, 2, 3, 4, 5))
    n = bench.pick(500, 800)
    out: dict[str, Any] = {"seeds": list(seeds), "requests": n, "rows": []}
    for load in (0.6, 0.9):
        for label, policy, scrape, cap, workers in CASES:
            runs = []
            for seed in seeds:
                jobs, arrivals = workload(n, seed, load)
                pol: Policy | str = policy if policy.startswith("oracle") else _gateway_policy(policy, seed)
                runs.append(simulate(pol, jobs, arrivals, scrape, cap, workers))
            row = {"load": load, "policy": label, **{k: mean([r[k] for r in runs]) for k in runs[0]},
                   "p99_each": [r["p99_s"] for r in runs]}
            out["rows"].append(row)
        bench.log(f"model: load {load:.0%} done")
    return out
