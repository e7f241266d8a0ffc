"""A vLLM-like GPU engine in simulated time: continuous batching, chunked prefill, and the
simulator's own prefix cache (`gateway.sim.prefix_cache.KvCache`: hashed 16-token blocks,
LRU eviction of freed blocks, hits capped at prompt_len - 1, vLLM's token counters).

Each engine step runs every admitted sequence's next decode token plus up to
`max_batched_tokens - decoding` prompt tokens of the sequences still prefilling (first
come, first served), and lasts

    step = base + kv_read x context tokens of the batch + prefill x prompt tokens in it

so prefill competes with decoding and with other prefills for the GPU, as it does on a
real engine: a 10k-token miss is ~1 s of prefill, and it stretches every decode step it
shares. The step that finishes a prompt produces its first token. A request is admitted
(FCFS) when a sequence slot is free (`max_num_seqs`) and the cache can hold its prompt
plus all its output.

The defaults are an 8B model (Llama-3-8B, bf16) on one 80 GB A100 under vLLM V1:
~10k prompt tokens/s of prefill (0.1 ms per token), decode steps of ~9 ms plus the KV
reads (128 KiB per token of context at ~1.5 TB/s: ~0.09 us per token), 400k tokens of
KV cache (80 GB x 0.9 - 16 GB of weights - activations, at 128 KiB per token),
max_num_seqs 256 and max_num_batched_tokens 2048 (V1's defaults).
"""

from __future__ import annotations

import heapq
import itertools
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field

from gateway.sim.prefix_cache import KvAllocation, KvCache

from .workload import BLOCK


@dataclass(frozen=True)
class EngineSpec:
    max_num_seqs: int = 256
    max_batched_tokens: int = 2048
    kv_tokens: int = 400_000
    step_base_s: float = 0.009
    kv_read_s_per_token: float = 0.09e-6
    prefill_s_per_token: float = 0.1e-3


@dataclass(eq=False)
class Seq:
    prompt_len: int
    out_len: int
    hashes: list[int]
    output_hashes: list[int]
    on_first: Callable[[float, int], None]  # (time, cached prompt tokens)
    on_done: Callable[[float], None]
    prefill_left: int = 0
    cached: int = 0
    alloc: KvAllocation | None = None
    finish_step: int = 0


@dataclass
class Engine:
    spec: EngineSpec
    schedule: Callable[[float, Callable[[], None]], None]  # run a callback at a simulated time
    kv: KvCache = field(init=False)
    waiting: deque[Seq] = field(default_factory=deque)
    prefilling: deque[Seq] = field(default_factory=deque)
    decoding: list[tuple[int, int, Seq]] = field(default_factory=list)  # heap by finish step
    requests: int = 0
    busy: bool = False
    step_no: int = 0
    # KV tokens of the admitted sequences (read by every step); every running sequence
    # adds one per step, counted in aggregate
    context_tokens: int = 0  # KV tokens of the admitted sequences (read by every step)
    _ids: itertools.count[int] = field(default_factory=itertools.count)

    def __post_init__(self) -> None:
        self.kv = KvCache(num_blocks=self.spec.kv_tokens // BLOCK, block_size=BLOCK)

    # --- what a /metrics scrape would show ---------------------------------------------
    @property
    def running(self) -> int:
        return len(self.prefilling) + len(self.decoding)

    @property
    def queued_prefill_tokens(self) -> int:
        return sum(s.prefill_left for s in self.prefilling) + sum(s.prompt_len for s in self.waiting)

    # --- requests --------------------------------------------------------------------
    def submit(self, seq: Seq, now: float) -> None:
        self.requests += 1
        self.waiting.append(seq)
        if not self.busy:
            self._step(now)

    def _admit(self) -> None:
        while self.waiting and self.running < self.spec.max_num_seqs:
            s = self.waiting[0]
            alloc = self.kv.try_allocate(s.hashes, s.prompt_len, s.prompt_len + s.out_len)
            if alloc is None:
                return  # FCFS: the head waits for room, and so does everyone behind it
            self.waiting.popleft()
            s.alloc, s.cached = alloc, alloc.cached_tokens
            s.prefill_left = s.prompt_len - s.cached
            self.context_tokens += s.cached
            self.prefilling.append(s)

    def _step(self, now: float) -> None:
        self._admit()
        n_dec = len(self.decoding)
        if not n_dec and not self.prefilling:
            self.busy = False
            return
        self.busy = True
        budget = self.spec.max_batched_tokens - n_dec
        chunks: list[tuple[Seq, int]] = []
        for s in self.prefilling:
            if budget <= 0:
                break
            take = min(s.prefill_left, budget)
            chunks.append((s, take))
            budget -= take
        prefill = sum(c for _, c in chunks)
        sp = self.spec
        dt = sp.step_base_s + sp.kv_read_s_per_token * self.context_tokens + sp.prefill_s_per_token * prefill
        self.schedule(now + dt, lambda: self._end_step(now + dt, n_dec, chunks))

    def _end_step(self, now: float, n_dec: int, chunks: list[tuple[Seq, int]]) -> None:
        self.step_no += 1
        self.context_tokens += n_dec
        for s, take in chunks:
            s.prefill_left -= take
            self.context_tokens += take
            if s.prefill_left == 0:
                self.prefilling.remove(s)
                s.on_first(now, s.cached)
                self.context_tokens += 1
                if s.out_len <= 1:
                    self._finish(s, now)
                else:
                    s.finish_step = self.step_no + s.out_len - 1
                    heapq.heappush(self.decoding, (s.finish_step, next(self._ids), s))
        while self.decoding and self.decoding[0][0] <= self.step_no:
            _, _, s = heapq.heappop(self.decoding)
            self._finish(s, now)
        self._step(now)

    def _finish(self, s: Seq, now: float) -> None:
        assert s.alloc is not None
        # Its context grew by one token per step (counted in aggregate): all of it goes now.
        self.context_tokens -= s.prompt_len + s.out_len
        self.kv.release(s.alloc, s.output_hashes)
        s.on_done(now)
