"""A prompt's prefix blocks: chained hashes of fixed-size chunks of its bytes.

The gateway does not tokenize on the hot path, so blocks are of prompt BYTES, not tokens:
the engine's own blocks are finer, but what the balancer needs is "how much of this
prompt did that engine see recently", and two prompts share their first k byte-blocks
exactly when they share their first k x block_bytes bytes, which for a conversation's
next turn is everything up to the previous turn's tail.

The bytes are the parts an engine's prompt is built from, in the order its chat template
lays them out (tools in the preamble, then the messages): orjson's serialisation of the
parsed `tools` and of each message. Re-serialising with orjson (C, ~1 GB/s) is cheaper
than locating the raw substrings in Python, and it is canonical: two gateway replicas,
or two clients that space their JSON differently, produce the same bytes.

Hashes are deterministic across processes (CRC-32 and Adler-32 of the whole prefix so
far, side by side: 64 bits, C speed, no per-process seed as Python's `hash` has), so
several gateway replicas agree on every block and on the conversation key.
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass
from typing import Any

import orjson

# Completions prompts have no conversation structure: their key is their first bytes.
COMPLETION_KEY_BLOCKS = 4


@dataclass(frozen=True, slots=True)
class PromptBlocks:
    hashes: tuple[int, ...]  # hash of the prompt prefix ending at each full block
    key: int  # the conversation's opening: tools + messages through the first user message
    # Blocks needed to cover the opening (its last one may be partial, then it is only
    # matched once a later turn filled it): a backend matching this many has seen this
    # conversation, not just a prefix all conversations share.
    key_blocks: int
    size: int  # prompt bytes hashed
    # The prompt goes past its opening (a conversation's later turn): only then can another
    # replica have routed this conversation before (routing.shared_routes).
    follow_up: bool = False

    @property
    def empty(self) -> bool:
        return not self.hashes and self.size == 0


NO_BLOCKS = PromptBlocks(hashes=(), key=0, key_blocks=0, size=0)


def _digest(data: bytes | memoryview) -> int:
    return zlib.crc32(data) << 32 | zlib.adler32(data)


def chain(data: bytes, block_bytes: int) -> tuple[int, ...]:
    """Hash of data[:k*block_bytes] for every full block k >= 1."""
    mv = memoryview(data)
    crc, adler = 0, 1
    out: list[int] = []
    for start in range(0, len(data) - block_bytes + 1, block_bytes):
        chunk = mv[start : start + block_bytes]
        crc = zlib.crc32(chunk, crc)
        adler = zlib.adler32(chunk, adler)
        out.append(crc << 32 | adler)
    return tuple(out)


def _chat_bytes(body: dict[str, Any]) -> tuple[bytes, int]:
    """(prompt bytes, end of the conversation's opening)."""
    parts: list[bytes] = []
    size = 0
    tools = body.get("tools")
    if tools:
        parts.append(orjson.dumps(tools))
        size += len(parts[-1])
    key_end = -1
    messages = body.get("messages")
    if isinstance(messages, list):
        for m in messages:
            parts.append(orjson.dumps(m))
            size += len(parts[-1])
            if key_end < 0 and isinstance(m, dict) and m.get("role") == "user":
                key_end = size
    data = b"".join(parts)
    return data, key_end if key_end >= 0 else size


def _completion_bytes(body: dict[str, Any], block_bytes: int) -> tuple[bytes, int]:
    prompt = body.get("prompt")
    data = prompt.encode() if isinstance(prompt, str) else orjson.dumps(prompt) if prompt is not None else b""
    return data, min(len(data), COMPLETION_KEY_BLOCKS * block_bytes)


def prompt_blocks(endpoint: str, body: dict[str, Any], block_bytes: int) -> PromptBlocks:
    """The prefix blocks of a chat or completions request; NO_BLOCKS for anything else
    (embeddings, malformed bodies the engine will reject anyway)."""
    try:
        if endpoint == "chat":
            data, key_end = _chat_bytes(body)
        elif endpoint == "completions":
            data, key_end = _completion_bytes(body, block_bytes)
        else:
            return NO_BLOCKS
    except (TypeError, orjson.JSONEncodeError):
        return NO_BLOCKS
    if not data:
        return NO_BLOCKS
    return PromptBlocks(
        hashes=chain(data, block_bytes),
        key=_digest(memoryview(data)[:key_end]),
        key_blocks=-(-key_end // block_bytes),
        size=len(data),
        follow_up=key_end < len(data),
    )
