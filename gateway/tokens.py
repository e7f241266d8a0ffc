"""Token counting that never touches the network.

tiktoken normally downloads its BPE tables on first use; a gateway in an air-gapped
GPU cluster cannot. We ship cl100k_base's table inside the package (verified by its
published SHA-256) and build the encoding from it. The simulator and the gateway's
fallback metering share these functions so an estimate of a cut-short stream uses
the same arithmetic the simulated engine used for its own counters.
"""

from __future__ import annotations

import base64
import functools
import hashlib
from collections.abc import Callable
from pathlib import Path
from typing import Any

import tiktoken

_DATA = Path(__file__).parent / "data" / "cl100k_base.tiktoken"
_SHA256 = "223921b76ee99bde995b7ff738513eef100fb51d18c93597a113bcffe865b2a7"
_PAT = (
    r"""'(?i:[sdmt]|ll|ve|re)|[^\r\n\p{L}\p{N}]?+\p{L}++|\p{N}{1,3}+| ?[^\s\p{L}\p{N}]++[\r\n]*+"""
    r"""|\s++$|\s*[\r\n]|\s+(?!\S)|\s"""
)
_SPECIAL = {
    "<|endoftext|>": 100257,
    "<|fim_prefix|>": 100258,
    "<|fim_middle|>": 100259,
    "<|fim_suffix|>": 100260,
    "<|endofprompt|>": 100276,
}

# ChatML-style framing: each message costs a few tokens beyond its text, and the
# reply is primed with an assistant header. Fixed numbers keep counts reproducible.
PER_MESSAGE_TOKENS = 3
REPLY_PRIMING_TOKENS = 3


@functools.cache
def encoding() -> tiktoken.Encoding:
    """The cl100k_base encoding, loaded from the bundled table (first call reads ~1.7 MB)."""
    raw = _DATA.read_bytes()
    if hashlib.sha256(raw).hexdigest() != _SHA256:
        raise RuntimeError(f"{_DATA} is corrupt (sha256 mismatch); reinstall the gateway package")
    ranks = {
        base64.b64decode(tok): int(rank)
        for tok, rank in (line.split() for line in raw.splitlines() if line)
    }
    return tiktoken.Encoding(name="cl100k_base", pat_str=_PAT, mergeable_ranks=ranks, special_tokens=_SPECIAL)


def encode(text: str) -> list[int]:
    return encoding().encode(text, disallowed_special=())


def count_text(text: str) -> int:
    return len(encode(text)) if text else 0


def decode(ids: list[int]) -> str:
    return encoding().decode(ids)


def _content_text(content: Any) -> str:
    """Text of a message's content: a string, or a list of parts of which text parts count."""
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        out = []
        for part in content:
            if isinstance(part, dict) and isinstance(part.get("text"), str):
                out.append(part["text"])
            elif isinstance(part, str):
                out.append(part)
        return "".join(out)
    return str(content)


def count_chat_prompt(
    messages: list[Any], tools: list[Any] | None = None, count: Callable[[str], int] = count_text
) -> int:
    """Prompt tokens of a chat request, the way the simulator (and our estimate) counts them.

    `count` counts a text (cl100k by default; estimates pass the model's own tokenizer).
    """
    count_text = count
    n = REPLY_PRIMING_TOKENS
    for m in messages:
        if not isinstance(m, dict):
            continue
        n += PER_MESSAGE_TOKENS + count_text(str(m.get("role", ""))) + count_text(_content_text(m.get("content")))
    if tools:
        import json

        n += count_text(json.dumps(tools, separators=(",", ":"), sort_keys=True))
    return n


def count_prompt(prompt: Any, count: Callable[[str], int] = count_text) -> int:
    """Prompt tokens of a legacy completion or embedding input: str, [str], [int] or [[int]]."""
    count_text = count
    if prompt is None:
        return 0
    if isinstance(prompt, str):
        return count_text(prompt)
    if isinstance(prompt, list):
        if not prompt:
            return 0
        if all(isinstance(x, int) for x in prompt):
            return len(prompt)
        return sum(count_prompt(x, count) for x in prompt)
    return count_text(str(prompt))
