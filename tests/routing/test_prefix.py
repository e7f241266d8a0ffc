"""Prompt prefix blocks: shared leading bytes give shared leading hashes, deterministically."""

from __future__ import annotations

import subprocess
import sys

from gateway.routing.prefix import NO_BLOCKS, chain, prompt_blocks

SYSTEM = {"role": "system", "content": "You are terse. " * 40}


def chat(*msgs: dict[str, str], tools: list[dict[str, object]] | None = None) -> dict[str, object]:
    body: dict[str, object] = {"model": "m", "messages": [SYSTEM, *msgs]}
    if tools:
        body["tools"] = tools
    return body


def test_next_turn_shares_every_full_block_of_the_previous_turn() -> None:
    t1 = chat({"role": "user", "content": "first question " * 30})
    t2 = chat({"role": "user", "content": "first question " * 30}, {"role": "assistant", "content": "an answer " * 50},
              {"role": "user", "content": "second"})
    b1, b2 = prompt_blocks("chat", t1, 128), prompt_blocks("chat", t2, 128)
    assert len(b1.hashes) >= 5 and len(b2.hashes) > len(b1.hashes)
    # t1's bytes end with `}` of its last message; t2 continues with `,{"role":...` after it,
    # so every full block of t1 is a block of t2.
    assert b2.hashes[: len(b1.hashes)] == b1.hashes
    # The conversation's opening (system + first user message) is the same key on both turns.
    # Its last block is partial on turn 1: only turn 2 fills it.
    assert b1.key == b2.key and b1.key_blocks == b2.key_blocks == len(b1.hashes) + 1
    assert len(b2.hashes) >= b2.key_blocks


def test_different_conversations_share_only_the_system_prompt() -> None:
    a = prompt_blocks("chat", chat({"role": "user", "content": "alpha " * 100}), 128)
    b = prompt_blocks("chat", chat({"role": "user", "content": "beta " * 100}), 128)
    shared = sum(1 for x, y in zip(a.hashes, b.hashes, strict=False) if x == y)
    assert 1 <= shared < len(a.hashes)
    assert a.key != b.key


def test_tools_come_first_so_a_shared_schema_is_a_shared_prefix() -> None:
    tools = [{"type": "function", "function": {"name": f"f{i}", "parameters": {"type": "object"}}} for i in range(40)]
    a = prompt_blocks("chat", chat({"role": "user", "content": "one"}, tools=tools), 256)
    b = prompt_blocks("chat", chat({"role": "user", "content": "two"}, tools=tools), 256)
    assert a.hashes[:8] == b.hashes[:8]


def test_block_hashes_match_an_explicit_prefix_hash() -> None:
    data = bytes(range(256)) * 5
    hs = chain(data, 100)
    assert len(hs) == 12
    assert chain(data[:700], 100) == hs[:7]
    assert chain(b"x" * 99, 100) == ()


def test_completions_prompt_and_other_endpoints() -> None:
    b = prompt_blocks("completions", {"prompt": "abc " * 300}, 256)
    assert len(b.hashes) == 4 and b.key_blocks == 4  # exactly 4 full blocks: nothing partial
    assert prompt_blocks("completions", {"prompt": [1, 2, 3]}, 64).size == len(b"[1,2,3]")
    assert prompt_blocks("embeddings", {"input": "x"}, 64) is NO_BLOCKS
    assert prompt_blocks("chat", {"messages": "not a list"}, 64) is NO_BLOCKS
    assert prompt_blocks("chat", {}, 64).empty


def test_hashes_are_the_same_in_another_process() -> None:
    # Two gateway replicas must agree: no per-process hash seed.
    code = ("from gateway.routing.prefix import prompt_blocks;"
            "b=prompt_blocks('chat',{'messages':[{'role':'user','content':'q'*500}]},128);print(b.key,b.hashes[-1])")
    out = {subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                          env={"PYTHONHASHSEED": seed}).stdout for seed in ("1", "2")}
    assert len(out) == 1


def test_completion_from_usage_reads_cached_tokens_when_present() -> None:
    from gateway.routing.request import completion_from_usage

    c = completion_from_usage(True, {"prompt_tokens": 100, "completion_tokens": 7,
                                     "prompt_tokens_details": {"cached_tokens": 64}}, 0.1, 0.5)
    assert (c.prompt_tokens, c.cached_tokens, c.output_tokens, c.ok) == (100, 64, 7, True)
    c = completion_from_usage(True, {"prompt_tokens": 100, "completion_tokens": 7}, None, 0.5)
    assert c.cached_tokens is None  # vLLM omits the details when nothing was cached
    c = completion_from_usage(False, None, None, 0.2)
    assert c.prompt_tokens is None and not c.ok
    c = completion_from_usage(True, {"prompt_tokens": True, "prompt_tokens_details": {"cached_tokens": "x"}}, None, 0)
    assert c.prompt_tokens is None and c.cached_tokens is None
