"""Usage of llama.cpp's non-stream answers with `n` > 1, made to count every choice.

llama-server runs one task per choice and answers with the first task's body, the other
choices appended: its `usage` counts ONE choice (3 completion tokens for 2 x 3), while
its own `llamacpp:tokens_predicted_total` counts them all. We correct the body the client
gets and the ledger: a choice whose output equals the reported one's costs the reported
count exactly (same text, same tokens); any other is counted with the pool's tokenizer
and the answer is flagged as estimated. Rare (n > 1 on a llama.cpp pool), and it may
load a tokenizer: callers run it in a worker thread.
"""

from __future__ import annotations

from typing import Any

import orjson

from ..metering.model_tokenizer import ModelTokenizer


def _output(choice: dict[str, Any]) -> tuple[str, str, str]:
    msg = choice.get("message")
    if isinstance(msg, dict):
        calls = msg.get("tool_calls")
        return (
            msg.get("content") or "",
            msg.get("reasoning_content") or msg.get("reasoning") or "",
            orjson.dumps(calls).decode() if calls else "",
        )
    text = choice.get("text")
    return (text if isinstance(text, str) else "", "", "")


def count_every_choice(body: bytes, tokenizer: ModelTokenizer) -> tuple[bytes, bool]:
    """(the body with `usage` covering every choice, whether any count is an estimate)."""
    try:
        obj = orjson.loads(body)
    except orjson.JSONDecodeError:
        return body, False
    choices = obj.get("choices") if isinstance(obj, dict) else None
    usage = obj.get("usage") if isinstance(obj, dict) else None
    if not isinstance(choices, list) or len(choices) < 2 or not isinstance(usage, dict):
        return body, False
    reported = usage.get("completion_tokens")
    if not isinstance(reported, int) or not all(isinstance(c, dict) for c in choices):
        return body, False
    first = _output(choices[0])
    total, estimated = reported, False
    for c in choices[1:]:
        out = _output(c)
        if out == first:
            total += reported
        else:
            total += sum(tokenizer.count_text(part) for part in out)
            estimated = True
    prompt = usage.get("prompt_tokens")
    usage["completion_tokens"] = total
    usage["total_tokens"] = total + (prompt if isinstance(prompt, int) else 0)
    return orjson.dumps(obj), estimated
