"""Cache-aware: send each request where it would get its first token soonest, counting what
that backend already has cached, never to an overloaded backend.

Each request's prompt is cut into byte blocks (`routing.prefix`); for each backend the
policy keeps an index of the blocks recently sent there (`routing.prefix_index`). For
every ready backend it predicts the request's time to first token:

    ttft(b) = slot wait(b) + prefill backlog(b) + prefill price x uncached tokens(b)

- slot wait: beyond the engine's batch (max-num-seqs), each batch-worth of requests
  ahead costs one typical request duration there (`speed_aware`'s queue model, in
  seconds of this backend's observed request time);
- prefill backlog: the prefill this gateway sent there and the engine has probably not
  finished yet (an engine computes prefills one budget at a time, so a 10k-token miss
  delays the next request's prefill too);
- uncached tokens: the prompt minus the prefix the index says that backend holds, from
  this replica's index or a record another replica shared (`routing.shared_routes`);
- prefill price: seconds per prompt token, fitted from the pool's own TTFTs
  (`routing.prefill_fit`).

The backend of least predicted TTFT wins. A cache hit is thus worth exactly the prefill
it saves and never more: a backend holding the whole conversation loses to an idle one
as soon as its queue costs more than the prefill. Ties (e.g. unrelated prompts while no
batch is full) go to the least loaded, then to the highest rendezvous hash of
(conversation opening, backend URL), so replicas that see the same state agree.

Safety net: a backend above (1 + balance_rel) x the candidates' mean load + balance_abs
is not eligible at all when another is, whatever its cache: the model above can be wrong
(unknown batch sizes, other traffic), and prefix-only routing is known to pile a hot
prefix onto one engine until it runs out of KV memory (sglang PR #14305,
vllm-project/router#179). The least loaded backend is never above the mean.

On completion the engine's own count of cached prompt tokens (usage) corrects the index
size (`PrefixIndex.calibrate`) and feeds the prefill fit; the byte/token ratio learnt from
usage converts bytes to tokens and the engine's KV capacity (tokens) into index blocks.
"""

from __future__ import annotations

import logging
import time
import zlib
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from ...config import PrefixRoutingConfig
from ..prefill_fit import PrefillFit
from ..prefix_index import PrefixIndex
from ..shared_routes import SharedRoutes
from .speed_aware import SpeedAware, engine_capacity

if TYPE_CHECKING:
    from ..backend import Backend
    from ..prefix import PromptBlocks
    from ..request import Completion, RouteRequest

log = logging.getLogger("gateway.routing.cache_aware")

INITIAL_BYTES_PER_TOKEN = 4.0  # serialised chat JSON per engine token, until usage says
DEFAULT_DURATION_S = 1.0  # a request's duration before any backend reported one
TIE_S = 1e-4  # predicted TTFTs this close are a tie (broken by rendezvous rank)


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
    prefill_until: float = 0.0  # monotonic time its prefill backlog (ours) should be done
    duration: float | None = None  # EWMA of a request's duration there, seconds


@dataclass(frozen=True, slots=True)
class Decision:
    backend: Backend
    reason: str  # "locality": the cached prefix decided it | "load": it did not | "single": no choice
    matched: int  # blocks of the prompt predicted cached on `backend`
    ttft: float = 0.0  # predicted seconds to first token there
    clean: bool = False  # no slot wait predicted: its TTFT measures prefill alone


@dataclass(frozen=True, slots=True)
class _Pending:
    matched: int  # blocks predicted cached at dispatch
    clean: bool
    prefill_end: float  # when its prefill was predicted done (it surely is once it ended)


class CacheAware:
    name = "cache_aware"

    def __init__(
        self, seed: int | None = None, cfg: PrefixRoutingConfig | None = None,
        clock: Callable[[], float] = time.monotonic, shared: SharedRoutes | None = None,
    ) -> None:
        self.cfg = cfg or PrefixRoutingConfig()
        self.clock = clock
        self.shared = shared if shared is not None and self.cfg.shared else None
        self._by_load = SpeedAware(seed)
        self._entries: dict[str, _Entry] = {}  # backend id -> its index
        self._pending: dict[int, _Pending] = {}  # id(request) -> what dispatch predicted
        self.bytes_per_token = INITIAL_BYTES_PER_TOKEN
        self.prefill = PrefillFit(self.cfg.prefill_ms_per_token / 1000.0)
        # The pool calls on_dispatch right after choose, in the same step: it says why.
        self._last: Decision | None = None

    # --- the index of one backend -------------------------------------------------------

    def _max_blocks(self, b: Backend) -> int:
        tokens = b.kv_capacity_tokens or self.cfg.capacity_tokens
        return int(tokens * self.bytes_per_token / self.cfg.block_bytes)

    def _entry(self, b: Backend, now: float) -> _Entry:
        e = self._entries.get(b.id)
        if e is None or e.restarts != b.restarts:
            e = self._entries[b.id] = _Entry(PrefixIndex(self._max_blocks(b), self.cfg.ttl), b.restarts)
        else:
            e.index.resize(self._max_blocks(b), now)
        return e

    def index(self, b: Backend, now: float) -> PrefixIndex:
        return self._entry(b, now).index

    # --- choosing -----------------------------------------------------------------------

    @property
    def _sharing(self) -> bool:
        """Replicas share records (a Redis client is attached); else the index says it all."""
        return self.shared is not None and self.shared.client is not None

    def prepare(self, request: RouteRequest) -> Awaitable[object] | None:
        """A follow-up turn this replica has not routed recently: read the shared record
        (bounded wait) before `choose`. None (nothing to await) otherwise."""
        if self.shared is None or self.shared.client is None:
            return None
        blocks = request.blocks
        if not blocks.follow_up or self.shared.peek(blocks.key) is not None:
            return None
        return self.shared.fetch(blocks.key)

    def choose(self, candidates: Sequence[Backend], request: RouteRequest | None = None) -> Backend:
        return self.decide(candidates, request).backend

    def slot_wait(self, b: Backend, e: _Entry, default_duration: float) -> float:
        """Seconds until the engine admits one more request (0 while nothing waits there).

        With a configured batch size: the requests beyond it, each batch-worth costing one
        request duration there. Without (vLLM does not export max-num-seqs, and a KV cache
        that is full makes requests wait below it anyway): the engine's own waiting gauge,
        the queue ahead drained by its running requests, one duration per batch-worth."""
        duration = e.duration if e.duration is not None else default_duration
        cap = engine_capacity(b)
        if cap is None:
            if b.engine_waiting <= 0:
                return 0.0
            return duration * (b.engine_waiting + 1.0) / max(1.0, b.engine_running)
        beyond = load(b) + 1.0 - cap
        return duration * beyond / cap if beyond > 0.0 else 0.0

    def _score(self, candidates: Sequence[Backend], blocks: PromptBlocks, now: float
               ) -> list[tuple[float, int, Backend, int, float, bool]]:
        """Per candidate: (predicted TTFT s, blocks cached there, backend, rendezvous rank,
        load, no slot wait)."""
        entries = [self._entry(b, now) for b in candidates]
        durations = [e.duration for e in entries if e.duration is not None]
        default_duration = sum(durations) / len(durations) if durations else DEFAULT_DURATION_S
        shared = self.shared.peek(blocks.key) if self._sharing else None
        price = self.prefill.seconds_per_token
        tokens_per_block = self.cfg.block_bytes / self.bytes_per_token
        prompt_tokens = blocks.size / self.bytes_per_token
        n = len(blocks.hashes)
        scored: list[tuple[float, int, Backend, int, float, bool]] = []
        for b, e in zip(candidates, entries, strict=True):
            m = e.index.match(blocks.hashes, now)
            if shared is not None and shared.url == b.url:
                m = max(m, min(shared.blocks, n))
            uncached = max(0.0, prompt_tokens - m * tokens_per_block)
            wait = self.slot_wait(b, e, default_duration)
            ttft = wait + max(0.0, e.prefill_until - now) + price * uncached
            scored.append((ttft, m, b, rendezvous(blocks.key, b.url), load(b), wait == 0.0))
        return scored

    def predictions(self, candidates: Sequence[Backend], request: RouteRequest) -> dict[Backend, float]:
        """Each candidate's predicted TTFT for `request`, in seconds (for tests and debugging)."""
        return {s[2]: s[0] for s in self._score(candidates, request.blocks, self.clock())}

    def decide(self, candidates: Sequence[Backend], request: RouteRequest | None) -> Decision:
        if len(candidates) == 1:  # nothing to choose (a one-engine pool): no hashing on the hot path
            self._last = Decision(candidates[0], "single", 0)
            return self._last
        blocks = request.blocks if request is not None else None
        if blocks is None or blocks.empty:
            return Decision(self._by_load.choose(candidates), "load", 0)
        now = self.clock()
        scored = self._score(candidates, blocks, now)
        loads = [s[4] for s in scored]
        bound = (1.0 + self.cfg.balance_rel) * (sum(loads) / len(loads)) + self.cfg.balance_abs
        price, n = self.prefill.seconds_per_token, len(blocks.hashes)
        eligible = [s for s in scored if s[4] <= bound] or scored
        best = min(eligible, key=lambda s: (s[0], -s[3]))
        ties = [s for s in eligible if s[0] - best[0] <= TIE_S]
        if len(ties) > 1:  # the least loaded; then the rendezvous rank, so replicas agree
            best = min(ties, key=lambda s: (s[4], -s[3]))
        # Locality decided it if a backend with less cached would have been chosen otherwise.
        least_cached = min(s[1] for s in eligible)
        reason = "locality" if best[1] > least_cached else "load"
        for s in scored:
            if s[4] > bound and s[1] > best[1]:
                s[2].cache.skipped_overloaded += 1  # held more of the prompt, but overloaded
        decision = Decision(best[2], reason, best[1], best[0], best[5])
        self._last = decision
        if log.isEnabledFor(logging.DEBUG):
            log.debug(
                "cache_aware: -> %s (%s) predicted TTFT %.3f s, matched %d/%d blocks, price %.3g ms/token, "
                "bound %.1f; per backend (ttft s, matched, load): %s",
                best[2].id, reason, best[0], best[1], n, price * 1000, bound,
                {s[2].id: (round(s[0], 4), s[1], s[4]) for s in scored},
            )
        return decision

    # --- hooks --------------------------------------------------------------------------

    def on_dispatch(self, backend: Backend, request: RouteRequest) -> None:
        last, self._last = self._last, None
        if last is not None and last.reason == "single" and last.backend is backend:
            return  # a lone candidate: what it caches matters only once it has company
        reason = last.reason if last is not None and last.backend is backend else "load"
        backend.cache.routed[reason] = backend.cache.routed.get(reason, 0) + 1
        blocks = request.blocks
        if blocks.empty:
            return
        now = self.clock()
        e = self._entry(backend, now)
        matched = last.matched if last is not None and last.backend is backend else e.index.match(blocks.hashes, now)
        backend.cache.predicted_bytes += blocks.size
        backend.cache.predicted_hit_bytes += min(blocks.size, matched * self.cfg.block_bytes)
        uncached = max(0.0, (blocks.size - matched * self.cfg.block_bytes) / self.bytes_per_token)
        e.prefill_until = max(now, e.prefill_until) + self.prefill.seconds_per_token * uncached
        clean = last is not None and last.backend is backend and last.clean
        self._pending[id(request)] = _Pending(matched, clean, e.prefill_until)
        # The engine computes and caches the whole prompt now. The opening's hash goes in
        # last (most recent): the opening's last block is usually partial, so only this
        # says "this backend has served this conversation" until a later turn fills it.
        e.index.insert((blocks.key, *blocks.hashes), now)
        if self._sharing:
            assert self.shared is not None
            self.shared.record(blocks.key, backend.url, len(blocks.hashes))

    def on_complete(self, backend: Backend, request: RouteRequest, completion: Completion | None) -> None:
        pending = self._pending.pop(id(request), None)
        e = self._entries.get(backend.id)
        if pending is None or e is None:
            return
        now = self.clock()
        if pending.prefill_end > now:  # it ended before its predicted prefill did: over-predicted
            e.prefill_until = max(now, e.prefill_until - (pending.prefill_end - now))
        if completion is None or not completion.prompt_tokens:
            return
        if completion.ok and completion.duration > 0.0:
            e.duration = completion.duration if e.duration is None else 0.8 * e.duration + 0.2 * completion.duration
        blocks = request.blocks
        if blocks.size:
            ratio = blocks.size / completion.prompt_tokens
            self.bytes_per_token = 0.95 * self.bytes_per_token + 0.05 * ratio
        cached = completion.cached_tokens
        if cached is not None:
            e.reports_cached = True
        elif e.reports_cached:
            cached = 0  # vLLM omits the details when nothing was cached
        else:
            return  # this engine does not say: nothing to calibrate against
        if pending.clean and completion.ttft is not None:
            self.prefill.add(completion.prompt_tokens - cached, completion.ttft)
        actual = cached * self.bytes_per_token / self.cfg.block_bytes
        if e.index.calibrate(pending.matched, actual, now):
            log.debug("cache_aware: %s cached %d tokens, %d blocks predicted: index cap -> %d",
                      backend.id, cached, pending.matched, e.index.cap)
