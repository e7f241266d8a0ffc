"""Prefix caching: the block cache itself (unit), and cached_tokens / timing / metrics over HTTP."""

from __future__ import annotations

import asyncio
import threading
from typing import Any

import pytest

from gateway import tokens
from gateway.sim.prefix_cache import KvCache, render_chat
from gateway.sim.testing import SimProcess

SYSTEM = "You are a careful assistant. " * 40  # ~240 tokens: many full 16-token blocks


def _ids(seed: int, n: int) -> list[int]:
    return [seed * 1000 + i for i in range(n)]


# ---- unit: KvCache ---------------------------------------------------------------------
def test_lru_eviction_frees_least_recently_released_first() -> None:
    async def run() -> None:
        kv = KvCache(num_blocks=6, block_size=4)
        seqs = {name: _ids(seed, 9) for seed, name in enumerate("abc", 1)}  # 2 full blocks + 1 partial
        hashes = {k: kv.block_hashes(v) for k, v in seqs.items()}
        for name in "ab":  # 3 blocks each: the cache is full, a's and b's full blocks evictable
            kv.release(await kv.allocate(hashes[name], 9, 9))
        assert kv.cached_prefix_blocks(hashes["a"], 9) == 2
        kv.release(await kv.allocate(hashes["c"], 9, 9))  # needs 3 blocks: 2 empty + evict 1 of a's
        # a's LAST block went first (tail first), so a keeps its first block, b keeps both.
        assert kv.cached_prefix_blocks(hashes["a"], 9) == 1
        assert kv.cached_prefix_blocks(hashes["b"], 9) == 2
        assert kv.stats.evictions == 1

    asyncio.run(run())


def test_hits_are_whole_blocks_and_leave_the_last_token_to_compute() -> None:
    async def run() -> None:
        kv = KvCache(num_blocks=64, block_size=4)
        ids = _ids(1, 8)  # exactly 2 blocks
        h = kv.block_hashes(ids)
        first = await kv.allocate(h, 8, 10)
        assert first.cached_tokens == 0
        kv.release(first)
        again = await kv.allocate(h, 8, 10)
        assert again.cached_tokens == 4  # capped at len-1 = 7 tokens -> 1 whole block, as vLLM
        kv.release(again)
        longer = _ids(1, 8) + [5, 6, 7, 8, 9]
        ext = await kv.allocate(kv.block_hashes(longer), len(longer), len(longer))
        assert ext.cached_tokens == 8
        assert (kv.stats.queries, kv.stats.hits) == (8 + 8 + 13, 0 + 4 + 8)

    asyncio.run(run())


def test_running_requests_keep_their_blocks_under_pressure() -> None:
    async def run() -> None:
        kv = KvCache(num_blocks=8, block_size=4)
        held_ids = _ids(1, 16)  # 4 blocks, kept by a "running" request
        held_h = kv.block_hashes(held_ids)
        held = await kv.allocate(held_h, 16, 16)
        for seed in range(2, 12):  # churn through the other 4 blocks many times
            ids = _ids(seed, 16)
            kv.release(await kv.allocate(kv.block_hashes(ids), 16, 16))
        assert kv.stats.evictions > 0
        assert kv.cached_prefix_blocks(held_h, 17) == 4
        assert kv.usage() == 0.5
        # A request that cannot fit waits until the running one ends.
        big = _ids(99, 28)
        task = asyncio.create_task(kv.allocate(kv.block_hashes(big), 28, 28))  # 7 blocks
        await asyncio.sleep(0.01)
        assert not task.done()
        kv.release(held)
        alloc = await asyncio.wait_for(task, 2.0)
        assert kv.used_blocks == 7
        kv.release(alloc)
        assert kv.used_blocks == 0

    asyncio.run(run())


def test_disabled_cache_never_hits_but_still_counts_usage() -> None:
    async def run() -> None:
        kv = KvCache(num_blocks=8, block_size=4, enabled=False)
        ids = _ids(1, 12)
        for _ in range(2):
            a = await kv.allocate([], 12, 12)
            assert a.cached_tokens == 0 and kv.usage() == 3 / 8
            kv.release(a)
        assert (kv.stats.queries, kv.stats.hits) == (0, 0)
        assert kv.block_hashes(ids)  # hashing works; the sim just does not look them up

    asyncio.run(run())


@pytest.mark.parametrize("messages,tools", [
    ([{"role": "user", "content": "hi"}], None),
    ([{"role": "system", "content": "é ünïcode"}, {"role": "user", "content": [{"type": "text", "text": "a"}, "b"]},
      {"role": "assistant", "content": None}, "not a message"], [{"type": "function", "function": {"name": "f"}}]),
])
def test_rendered_chat_ids_match_the_prompt_token_count(messages: list[Any], tools: Any) -> None:
    assert len(render_chat(messages, tools)) == tokens.count_chat_prompt(messages, tools)


def test_a_longer_conversation_starts_with_the_shorter_ones_ids() -> None:
    turn1 = [{"role": "system", "content": SYSTEM}, {"role": "user", "content": "hello"}]
    turn2 = turn1 + [{"role": "assistant", "content": " reply words"}, {"role": "user", "content": "more"}]
    a, b = render_chat(turn1, None), render_chat(turn2, None)
    assert b[:len(a)] == a  # the reply priming is the start of the assistant message


# ---- over HTTP ------------------------------------------------------------------------------
def _chat(sim: SimProcess, messages: list[dict[str, str]], **extra: Any) -> dict[str, Any]:
    status, body = sim.request("POST", "/v1/chat/completions",
                               {"model": "m", "messages": messages, "max_tokens": 8, **extra})
    assert status == 200, body
    import json
    return json.loads(body)


def _cached(resp: dict[str, Any]) -> int:
    details = resp["usage"]["prompt_tokens_details"]
    return 0 if details is None else details["cached_tokens"]


def test_cached_tokens_grow_over_a_conversation_and_shared_system_prompts_share_blocks() -> None:
    args = ["--served-model-name", "m", "--ttft-ms", "0", "--itl-ms", "0", "--enable-prompt-tokens-details"]
    with SimProcess(args) as sim:
        convo = [{"role": "system", "content": SYSTEM}, {"role": "user", "content": "first question"}]
        r1 = _chat(sim, convo)
        assert r1["usage"]["prompt_tokens_details"] is None  # nothing cached: vLLM omits the details
        n1 = r1["usage"]["prompt_tokens"]
        r1b = _chat(sim, convo)
        assert _cached(r1b) == (n1 - 1) // 16 * 16  # all whole blocks but the last token
        convo2 = convo + [{"role": "assistant", "content": r1["choices"][0]["message"]["content"]},
                          {"role": "user", "content": "a follow-up question"}]
        r2 = _chat(sim, convo2)
        assert _cached(r2) >= (n1 - 1) // 16 * 16  # the previous turn's prompt (and reply) blocks
        other = [{"role": "system", "content": SYSTEM}, {"role": "user", "content": "unrelated"}]
        r3 = _chat(sim, other)
        system_blocks = len(render_chat([{"role": "system", "content": SYSTEM}], None)) // 16
        assert _cached(r3) >= (system_blocks - 1) * 16 > 0
        m = sim.metrics()
        prompts = [r["usage"]["prompt_tokens"] for r in (r1, r1b, r2, r3)]
        assert m["vllm:prefix_cache_queries_total"] == sum(prompts)
        assert m["vllm:prefix_cache_hits_total"] == sum(_cached(r) for r in (r1, r1b, r2, r3))
        state = sim.state()["kv_cache"]
        assert state["enabled"] and state["cached_blocks"] > 0 and state["used_blocks"] == 0


def test_prompt_tokens_details_stay_null_by_default_like_vllm() -> None:
    with SimProcess(["--served-model-name", "m", "--ttft-ms", "0", "--itl-ms", "0"]) as sim:
        convo = [{"role": "system", "content": SYSTEM}, {"role": "user", "content": "q"}]
        _chat(sim, convo)
        again = _chat(sim, convo)
        assert again["usage"]["prompt_tokens_details"] is None
        assert sim.metrics()["vllm:prefix_cache_hits_total"] > 0  # the cache still worked


def test_completions_prompt_and_stream_usage_report_cached_tokens() -> None:
    args = ["--served-model-name", "m", "--ttft-ms", "0", "--itl-ms", "0", "--enable-prompt-tokens-details"]
    with SimProcess(args) as sim:
        body = {"model": "m", "prompt": SYSTEM, "max_tokens": 4, "stream": True,
                "stream_options": {"include_usage": True}}
        sim.stream("/v1/completions", body)
        events = sim.stream("/v1/completions", body)
        usage = events[-2]["usage"]
        assert usage["prompt_tokens_details"]["cached_tokens"] == (usage["prompt_tokens"] - 1) // 16 * 16


def test_no_enable_prefix_caching_means_no_hits() -> None:
    args = ["--served-model-name", "m", "--ttft-ms", "0", "--itl-ms", "0", "--enable-prompt-tokens-details",
            "--no-enable-prefix-caching"]
    with SimProcess(args) as sim:
        convo = [{"role": "system", "content": SYSTEM}, {"role": "user", "content": "q"}]
        for _ in range(2):
            assert _chat(sim, convo)["usage"]["prompt_tokens_details"] is None
        m = sim.metrics()
        assert m["vllm:prefix_cache_hits_total"] == 0 and m["vllm:prefix_cache_queries_total"] == 0
        assert sim.state()["kv_cache"]["cached_blocks"] == 0


def test_a_cached_prompt_prefills_faster() -> None:
    # 20 ms per uncached token: ~5 s for the first request's prefill vs < 0.1 s once cached, read
    # from the sim's own TTFT histogram sum (what it charged, not the client's wall clock).
    args = ["--served-model-name", "m", "--ttft-ms", "0", "--itl-ms", "0", "--prefill-ms-per-token", "20"]
    with SimProcess(args) as sim:
        convo = [{"role": "system", "content": SYSTEM}, {"role": "user", "content": "q"}]
        _chat(sim, convo)
        first = sim.metrics()["vllm:time_to_first_token_seconds_sum"]
        _chat(sim, convo)
        second = sim.metrics()["vllm:time_to_first_token_seconds_sum"] - first
        assert first > 4.0
        assert second < first / 4


def test_kv_usage_tracks_blocks_of_running_requests() -> None:
    args = ["--served-model-name", "m", "--ttft-ms", "0", "--itl-ms", "20", "--num-gpu-blocks-override", "400",
            "--max-model-len", "2048"]
    with SimProcess(args) as sim:
        assert sim.metrics()["vllm:kv_cache_usage_perc"] == 0.0
        done = threading.Event()

        def run() -> None:
            _chat(sim, [{"role": "user", "content": SYSTEM}], max_tokens=100)
            done.set()

        t = threading.Thread(target=run)
        t.start()
        sim.wait_for(lambda m: m["vllm:num_requests_running"] == 1, timeout=5)
        usage = sim.metrics()["vllm:kv_cache_usage_perc"]
        assert 0.0 < usage <= 0.1  # ~250 prompt + <=100 output tokens = <=22 of 400 blocks
        t.join(10)
        assert done.is_set()
        assert sim.metrics()["vllm:kv_cache_usage_perc"] == 0.0


def test_max_model_len_beyond_kv_capacity_fails_to_start_like_vllm() -> None:
    with pytest.raises(Exception, match="larger than the maximum number of tokens"):
        SimProcess(["--served-model-name", "m", "--num-gpu-blocks-override", "4", "--max-model-len", "512"])
