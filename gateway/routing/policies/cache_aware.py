"""Cache-aware: send a conversation where its prefix is cached, never to an overloaded backend.

Each request's prompt is cut into byte blocks (`routing.prefix`); for each backend the
policy keeps an index of the blocks recently sent there (`routing.prefix_index`). Then:

1. Load bound. load = max(our requests in flight, the engine's running + waiting). A
   backend above (1 + balance_rel) x the candidates' mean load + balance_abs is not
   eligible for locality, whatever its cached prefix: prefix-only routing piles a hot
   prefix onto one engine until it runs out of KV memory (sglang PR #14305,
   vllm-project/router#179). The least loaded backend is never above the mean, so one
   is always eligible.
2. Locality. An eligible backend that has served this conversation (its index holds the
   hash of the conversation's opening, tools + messages through the first user message,
   or blocks reaching past the opening's end) takes it: the longest cached prefix wins.
   A match on a prefix every conversation shares (a system prompt, a tool schema) does
   not count: every backend gets those soon enough, so they must not attract traffic. Matches shorter than the opening are
   prefixes every conversation shares (a system prompt, a tool schema): every backend
   gets them soon enough, so they do not attract traffic.
3. Affinity. Otherwise, if the prompt shares anything with what any backend has seen,
   of the backends within `affinity_slack` requests of the least loaded one, the one
   ranked first for the conversation's opening by rendezvous hashing (highest hash of
   (opening, backend URL)) takes it. A conversation's turns then meet on one backend even
   through another gateway replica that never saw the earlier turns (the rank depends
   only on the request and the backend URLs), while a new conversation is placed almost
   as evenly as by shortest queue: the slack is what trades balance for agreement.
4. Load. A prompt that shares nothing with anything seen (no locality to win) goes by
   shortest expected delay, exactly as `speed_aware`, ties broken by the same rendezvous
   rank so replicas still tend to agree.

On completion the engine's own count of cached prompt tokens (usage) corrects the index
size (`PrefixIndex.calibrate`); the byte/token ratio learnt from usage converts the
engine's KV capacity (tokens) into index blocks.
"""

from __future__ import annotations

import logging
import time
import zlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from ...config import PrefixRoutingConfig
from ..prefix_index import PrefixIndex
from .speed_aware import SpeedAware

if TYPE_CHECKING:
    from ..backend import Backend
    from ..request import Completion, RouteRequest

log = logging.getLogger("gateway.routing.cache_aware")

INITIAL_BYTES_PER_TOKEN = 4.0  # serialised chat JSON per engine token, until usage says


def load(b: Backend) -> float:
    """Requests at the engine: ours, or the engine's own gauges when they show more
    (traffic from other gateway replicas or direct clients)."""
    return max(float(b.outstanding), b.engine_running + b.engine_waiting)


def rendezvous(key: int, url: str) -> int:
    """Deterministic score of (conversation opening, backend): the highest one wins."""
    return zlib.crc32(url.encode(), key & 0xFFFFFFFF) ^ (key >> 32)


@dataclass
class _Entry:
    index: PrefixIndex
    restarts: int  # the engine behind restarted -> its cache is empty
    reports_cached: bool = False  # the engine has sent usage.prompt_tokens_details


@dataclass(frozen=True, slots=True)
class Decision:
    backend: Backend
    reason: str  # "locality" | "affinity" | "load"
    matched: int  # blocks of the prompt predicted cached on `backend`


class CacheAware:
    name = "cache_aware"

    def __init__(
        self, seed: int | None = None, cfg: PrefixRoutingConfig | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.cfg = cfg or PrefixRoutingConfig()
        self.clock = clock
        self._by_load = SpeedAware(seed)
        self._entries: dict[str, _Entry] = {}  # backend id -> its index
        self._pending: dict[int, int] = {}  # id(request) -> blocks predicted at dispatch
        self.bytes_per_token = INITIAL_BYTES_PER_TOKEN
        # The pool calls on_dispatch right after choose, in the same step: it says why.
        self._last: Decision | None = None

    # --- the index of one backend -------------------------------------------------------

    def _max_blocks(self, b: Backend) -> int:
        tokens = b.kv_capacity_tokens or self.cfg.capacity_tokens
        return int(tokens * self.bytes_per_token / self.cfg.block_bytes)

    def index(self, b: Backend, now: float) -> PrefixIndex:
        e = self._entries.get(b.id)
        if e is None or e.restarts != b.restarts:
            e = self._entries[b.id] = _Entry(PrefixIndex(self._max_blocks(b), self.cfg.ttl), b.restarts)
        else:
            e.index.resize(self._max_blocks(b), now)
        return e.index

    # --- choosing -----------------------------------------------------------------------

    def choose(self, candidates: Sequence[Backend], request: RouteRequest | None = None) -> Backend:
        return self.decide(candidates, request).backend

    def decide(self, candidates: Sequence[Backend], request: RouteRequest | None) -> Decision:
        blocks = request.blocks if request is not None else None
        if blocks is None or blocks.empty:
            return Decision(self._by_load.choose(candidates), "load", 0)
        now = self.clock()
        cfg = self.cfg
        loads = [load(b) for b in candidates]
        bound = (1.0 + cfg.balance_rel) * (sum(loads) / len(loads)) + cfg.balance_abs
        indexes = [self.index(b, now) for b in candidates]
        matches = [idx.match(blocks.hashes, now) for idx in indexes]
        best: Decision | None = None
        best_rank = -1
        passed_over: set[Backend] = set()  # held this request's prefix (or rank) but overloaded
        for b, idx, lo, m in zip(candidates, indexes, loads, matches, strict=True):
            if not (m >= max(1, blocks.key_blocks) or (m and idx.has(blocks.key, now))):
                continue  # only a prefix every conversation shares, if anything
            if lo > bound:
                passed_over.add(b)
                continue
            rank = rendezvous(blocks.key, b.url)
            if best is None or m > best.matched or (m == best.matched and rank > best_rank):
                best, best_rank = Decision(b, "locality", m), rank
        if best is None and any(matches):
            ranked = sorted(range(len(candidates)), key=lambda i: rendezvous(blocks.key, candidates[i].url), reverse=True)
            near = min(loads) + cfg.affinity_slack
            i = next(i for i in ranked if loads[i] <= near)
            if i != ranked[0]:
                passed_over.add(candidates[ranked[0]])
            best = Decision(candidates[i], "affinity", matches[i])
        if best is None:
            b = self._least_delay(candidates, blocks.key)
            best = Decision(b, "load", 0)
        for b in passed_over:
            b.cache.skipped_overloaded += 1
        self._last = best
        if log.isEnabledFor(logging.DEBUG):
            i = candidates.index(best.backend)
            log.debug(
                "cache_aware: -> %s (%s) matched %d/%d blocks (opening %d), load %.1f, bound %.1f, loads %s",
                best.backend.id, best.reason, best.matched, len(blocks.hashes), blocks.key_blocks,
                loads[i], bound, {b.id: lo for b, lo in zip(candidates, loads, strict=True)},
            )
        return best

    def _least_delay(self, candidates: Sequence[Backend], key: int) -> Backend:
        """speed_aware's choice, ties broken by rendezvous rank instead of at random."""
        best = self._by_load.cheapest(candidates)
        if len(best) == 1:
            return best[0]
        return max(best, key=lambda b: rendezvous(key, b.url))

    # --- hooks --------------------------------------------------------------------------

    def on_dispatch(self, backend: Backend, request: RouteRequest) -> None:
        last, self._last = self._last, None
        reason = last.reason if last is not None and last.backend is backend else "load"
        backend.cache.routed[reason] = backend.cache.routed.get(reason, 0) + 1
        blocks = request.blocks
        if blocks.empty:
            return
        now = self.clock()
        idx = self.index(backend, now)
        matched = idx.match(blocks.hashes, now)
        self._pending[id(request)] = matched
        backend.cache.predicted_bytes += blocks.size
        backend.cache.predicted_hit_bytes += matched * self.cfg.block_bytes
        # The engine computes and caches the whole prompt now. The opening's hash goes in
        # last (most recent): the opening's last block is usually partial, so only this
        # says "this backend has served this conversation" until a later turn fills it.
        idx.insert((blocks.key, *blocks.hashes), now)

    def on_complete(self, backend: Backend, request: RouteRequest, completion: Completion | None) -> None:
        predicted = self._pending.pop(id(request), None)
        if predicted is None or completion is None or not completion.prompt_tokens:
            return
        blocks = request.blocks
        if blocks.size:
            ratio = blocks.size / completion.prompt_tokens
            self.bytes_per_token = 0.95 * self.bytes_per_token + 0.05 * ratio
        e = self._entries.get(backend.id)
        if e is None:
            return
        cached = completion.cached_tokens
        if cached is not None:
            e.reports_cached = True
        elif e.reports_cached:
            cached = 0  # vLLM omits the details when nothing was cached
        else:
            return  # this engine does not say: nothing to calibrate against
        actual = cached * self.bytes_per_token / self.cfg.block_bytes
        if e.index.calibrate(predicted, actual, self.clock()):
            log.debug("cache_aware: %s cached %d tokens, %d blocks predicted: index cap -> %d",
                      backend.id, cached, predicted, e.index.cap)
