"""Automatic prefix caching over simulated KV blocks, as vLLM V1 does it.

The KV cache is `num_blocks` blocks of `block_size` tokens. A FULL block of a sequence
is identified by a chained hash, hash(parent block's hash, this block's token ids), so
two prompts share a block exactly when they share every token up to its end. Blocks
held by running requests are referenced and never evicted; when a request ends its
blocks stay cached but become evictable, least recently freed first (vLLM frees a
request's blocks tail first, so a prompt's last blocks go before its first ones).

Accounting follows vLLM: a lookup is capped at prompt_len - 1 tokens (the last prompt
token is always computed, to produce logits), hits are whole blocks, and the
`prefix_cache_queries` / `prefix_cache_hits` counters count tokens. Blocks are
allocated for the whole sequence (prompt + planned output) at admission rather than
step by step: simpler, and it only makes usage rise a little earlier than vLLM's.

Prompt token ids are what the engine would see: for chat, a ChatML-like rendering whose
length equals `gateway.tokens.count_chat_prompt` (the sim's prompt_tokens), laid out so
a longer conversation starts with the exact ids of the shorter one.
"""

from __future__ import annotations

import asyncio
import json
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any

import orjson

from gateway import tokens

# ChatML control ids (cl100k's <|im_start|> / <|im_end|>): 1 token each, never produced by text.
IM_START = 100264
IM_END = 100265
_ID_CACHE_MAX = 4096
DEFAULT_NUM_BLOCKS = 65536  # x 16 tokens = 1M tokens: never the limit unless a test asks


@dataclass
class KvConfig:
    block_size: int = 16  # --block-size (vLLM's default on CUDA)
    num_gpu_blocks: int = DEFAULT_NUM_BLOCKS  # --num-gpu-blocks-override
    enable_prefix_caching: bool = True  # --[no-]enable-prefix-caching (on by default in V1)
    enable_prompt_tokens_details: bool = False  # --enable-prompt-tokens-details


@dataclass
class KvAllocation:
    """The blocks one request holds while it runs."""

    cached_tokens: int  # prompt tokens served from the cache (what usage reports)
    hashes: list[int]  # referenced cached full blocks (prompt prefix hits + newly computed full blocks)
    fresh_blocks: int  # blocks holding no reusable hash (partial block, output room)


@dataclass
class PrefixCacheStats:
    queries: int = 0  # prompt tokens looked up (vLLM: vllm:prefix_cache_queries)
    hits: int = 0  # of those, served from the cache (vllm:prefix_cache_hits)
    evictions: int = 0  # cached blocks reused for other data


@dataclass
class KvCache:
    num_blocks: int
    block_size: int
    enabled: bool = True
    stats: PrefixCacheStats = field(default_factory=PrefixCacheStats)
    # hash -> reference count (0 = cached but evictable; then also in _evictable)
    _refs: dict[int, int] = field(default_factory=dict)
    _evictable: OrderedDict[int, None] = field(default_factory=OrderedDict)  # LRU first
    _used: int = 0  # blocks referenced by running requests
    _freed: asyncio.Event | None = None  # set when blocks are released (wakes waiters)

    # ---- occupancy ------------------------------------------------------------------
    @property
    def used_blocks(self) -> int:
        return self._used

    @property
    def cached_blocks(self) -> int:
        """Blocks holding a reusable hash (referenced or evictable)."""
        return len(self._refs)

    def usage(self) -> float:
        """vLLM's kv_cache_usage_perc: 1 - free/total, where evictable cached blocks count as free."""
        return self._used / self.num_blocks if self.num_blocks else 0.0

    def _free_blocks(self) -> int:
        return self.num_blocks - self._used  # empty blocks + evictable cached ones

    # ---- hashing -------------------------------------------------------------------
    def block_hashes(self, ids: list[int]) -> list[int]:
        """Chained hashes of the full blocks of `ids`."""
        bs = self.block_size
        out: list[int] = []
        parent = 0
        for start in range(0, len(ids) - bs + 1, bs):
            parent = hash((parent, tuple(ids[start:start + bs])))
            out.append(parent)
        return out

    def cached_prefix_blocks(self, hashes: list[int], prompt_len: int) -> int:
        """How many leading blocks are cached (without touching LRU order)."""
        if not self.enabled or prompt_len <= 1:
            return 0
        limit = min(len(hashes), (prompt_len - 1) // self.block_size)
        n = 0
        while n < limit and hashes[n] in self._refs:
            n += 1
        return n

    # ---- allocation ------------------------------------------------------------------
    async def allocate(self, prompt_hashes: list[int], prompt_len: int, total_tokens: int) -> KvAllocation:
        """Reference the cached prefix and allocate the rest of `total_tokens`, waiting while the
        cache is too full (the blocks of running requests are never evicted). Records stats."""
        while True:
            alloc = self.try_allocate(prompt_hashes, prompt_len, total_tokens)
            if alloc is not None:
                return alloc
            if self._freed is None:
                self._freed = asyncio.Event()
            self._freed.clear()
            await self._freed.wait()

    def try_allocate(self, prompt_hashes: list[int], prompt_len: int, total_tokens: int) -> KvAllocation | None:
        """`allocate` without waiting: None when the cache is too full now (nothing changed)."""
        bs = self.block_size
        need_total = -(-total_tokens // bs)
        hit = self.cached_prefix_blocks(prompt_hashes, prompt_len)
        # Evictable hits are counted in _free_blocks but get no new block: only the rest is new.
        revived = sum(1 for h in prompt_hashes[:hit] if self._refs[h] == 0)
        if need_total - hit + revived > self._free_blocks():
            return None
        if self.enabled:
            self.stats.queries += prompt_len
            self.stats.hits += hit * bs
        held: list[int] = []
        for h in prompt_hashes[:hit]:
            self._ref(h)
            held.append(h)
        new_blocks = need_total - hit
        self._used += new_blocks
        # Make room: each new block takes an empty block or evicts the least recently freed.
        overflow = self._used + len(self._evictable) - self.num_blocks
        for _ in range(max(0, overflow)):
            victim, _ = self._evictable.popitem(last=False)
            del self._refs[victim]
            self.stats.evictions += 1
        # Full prompt blocks computed now become cached (and shared) at once, as in vLLM.
        fresh = new_blocks
        if self.enabled:
            for h in prompt_hashes[hit:]:
                if h in self._refs:  # another request computed it meanwhile: share, free ours
                    self._ref(h)
                    self._used -= 1
                else:
                    self._refs[h] = 1
                held.append(h)
                fresh -= 1
        return KvAllocation(cached_tokens=hit * bs, hashes=held, fresh_blocks=fresh)

    def _ref(self, h: int) -> None:
        n = self._refs[h]
        if n == 0:
            del self._evictable[h]
            self._used += 1
        self._refs[h] = n + 1

    def release(self, alloc: KvAllocation, output_hashes: list[int] | None = None) -> None:
        """A request ended: its cached blocks become evictable (tail first), the rest free.

        `output_hashes` are the full blocks of prompt+output beyond the prompt's, which vLLM
        also caches; they reuse blocks the request already held, so occupancy is unchanged."""
        fresh = alloc.fresh_blocks
        tail: list[int] = []
        if self.enabled and output_hashes:
            for h in output_hashes:
                if fresh == 0:
                    break
                if h not in self._refs:
                    self._refs[h] = 1
                    tail.append(h)
                    fresh -= 1
        self._used -= fresh
        # Freed in reverse order, so a sequence's last blocks are evicted before its first ones.
        for h in reversed(alloc.hashes + tail):
            n = self._refs[h] - 1
            self._refs[h] = n
            if n == 0:
                self._evictable[h] = None
                self._used -= 1
        if self._freed is not None:
            self._freed.set()

    def reset(self) -> bool:
        """Drop every evictable cached block (vLLM's reset_prefix_cache). False while blocks
        are in use, as vLLM refuses then."""
        if any(n > 0 for n in self._refs.values()):
            return False
        self._refs.clear()
        self._evictable.clear()
        return True

    def render_metrics(self, labels: str, out: list[str]) -> None:
        """vLLM's counters count tokens, and stay 0 with prefix caching off. cache_config_info
        carries the KV size as labels (a gateway sizes its prefix index from it)."""
        out += ["# HELP vllm:cache_config_info Information of the LLMEngine CacheConfig",
                "# TYPE vllm:cache_config_info gauge",
                f'vllm:cache_config_info{{block_size="{self.block_size}",enable_prefix_caching='
                f'"{self.enabled}",num_gpu_blocks="{self.num_blocks}"}} 1.0',
                "# HELP vllm:prefix_cache_queries Prefix cache queries, in terms of number of queried tokens.",
                "# TYPE vllm:prefix_cache_queries counter",
                f"vllm:prefix_cache_queries_total{{{labels}}} {float(self.stats.queries)}",
                "# HELP vllm:prefix_cache_hits Prefix cache hits, in terms of number of cached tokens.",
                "# TYPE vllm:prefix_cache_hits counter",
                f"vllm:prefix_cache_hits_total{{{labels}}} {float(self.stats.hits)}"]

    def snapshot(self) -> dict[str, Any]:
        return {"enabled": self.enabled, "block_size": self.block_size, "num_blocks": self.num_blocks,
                "used_blocks": self._used, "cached_blocks": len(self._refs),
                "evictable_blocks": len(self._evictable), "queries": self.stats.queries,
                "hits": self.stats.hits, "evictions": self.stats.evictions}


# ---- prompt token ids --------------------------------------------------------------------
class PromptIds:
    """Token ids of prompts, cached by the prompt's canonical key (protocol.Prompt.key)."""

    def __init__(self) -> None:
        self._cache: dict[bytes, list[int]] = {}

    def get(self, key: bytes, ids: list[int] | None) -> list[int]:
        if ids is not None:
            return ids
        out = self._cache.get(key)
        if out is None:
            out = _render(key)
            if len(self._cache) >= _ID_CACHE_MAX:
                self._cache.clear()  # crude but O(1) amortised, like protocol's count cache
            self._cache[key] = out
        return out


def _render(key: bytes) -> list[int]:
    kind = key[:1]
    if kind == b"s":
        return tokens.encode(key[1:].decode())
    if kind == b"t":
        return list(orjson.loads(key[1:]))
    messages, tools = orjson.loads(key)  # chat: protocol keys chat prompts by [messages, tools]
    return render_chat(messages, tools)


def render_chat(messages: list[Any], tools: list[Any] | None) -> list[int]:
    """ChatML-like ids, exactly `tokens.count_chat_prompt(messages, tools)` long.

    Tools come first (templates put them in the system preamble), then per message
    `<|im_start|> role \\n content <|im_end|>` (3 framing tokens, as the count assumes), then
    the reply priming `<|im_start|> assistant \\n`, which is also how the next turn's
    assistant message begins, so a follow-up shares everything up to the new reply.
    """
    out: list[int] = []
    if tools:
        # The same serialisation count_chat_prompt measures (json escapes non-ASCII, orjson not).
        out += tokens.encode(json.dumps(tools, separators=(",", ":"), sort_keys=True))
    newline = tokens.encode("\n")
    for m in messages:
        if not isinstance(m, dict):
            continue
        out.append(IM_START)
        out += tokens.encode(str(m.get("role", "")))
        out += newline
        out += tokens.encode(_content_text(m.get("content")))
        out.append(IM_END)
    priming = [IM_START, *tokens.encode("assistant"), *newline]
    out += (priming + [IM_END] * tokens.REPLY_PRIMING_TOKENS)[:tokens.REPLY_PRIMING_TOKENS]
    return out


def _content_text(content: Any) -> str:
    # Same reading as gateway.tokens.count_chat_prompt (a test checks the lengths agree).
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "".join(p["text"] if isinstance(p, dict) and isinstance(p.get("text"), str)
                       else p if isinstance(p, str) else "" for p in content)
    return str(content)


def output_ids(text: str, finished_by_eos: bool) -> list[int]:
    """Ids the engine generated: the visible text, plus the EOS (`<|im_end|>` in the chat
    rendering) when it stopped by itself, which the next turn's prompt repeats."""
    ids = tokens.encode(text)
    if finished_by_eos:
        ids.append(IM_END)
    return ids


class RequestKv:
    """The KV blocks of one HTTP request: one sequence per prompt (vLLM runs each prompt of a
    batched completion as its own request), sized for its prompt and all its choices' output."""

    def __init__(self, cache: KvCache, prompts: list[list[int]], output_tokens: list[int]) -> None:
        self.cache = cache
        self.prompts = prompts
        self.output_tokens = output_tokens
        self.hashes = [cache.block_hashes(ids) if cache.enabled else [] for ids in prompts]
        self.allocs: list[KvAllocation] = []

    async def admit(self) -> int:
        """Allocate every sequence (waiting for room if need be); returns the cached prompt tokens."""
        for ids, hashes, out in zip(self.prompts, self.hashes, self.output_tokens, strict=True):
            self.allocs.append(await self.cache.allocate(hashes, len(ids), len(ids) + out))
        return sum(a.cached_tokens for a in self.allocs)

    def release(self, outputs: list[list[int]] | None) -> None:
        """Free the blocks; `outputs` (generated ids per sequence) are cached too when given."""
        for i, alloc in enumerate(self.allocs):
            extra: list[int] | None = None
            if outputs is not None and self.cache.enabled and outputs[i]:
                full = self.cache.block_hashes(self.prompts[i] + outputs[i])
                extra = full[len(self.hashes[i]):]
            self.cache.release(alloc, extra)
        self.allocs = []
