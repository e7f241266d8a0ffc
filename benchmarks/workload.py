"""Request bodies with exactly known output lengths, and the balancing workload.

The simulator stops at the smaller of `max_tokens` and the prompt's "natural" length
(8..200 tokens, a hash of the prompt), so a request generates exactly `max_tokens`
tokens only if its prompt's natural length is at least that. `prompt_for(n)` finds such
a prompt with the simulator's own functions, so output lengths are exact, and the
oracle can compute service times from them.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass
from typing import Any

import orjson

from gateway import tokens
from gateway.sim import textgen

MAX_NATURAL = 200  # the simulator's longest natural answer


def natural_length(messages: list[dict[str, Any]], seed: int = 0) -> int:
    """What the simulator (with `--seed seed`) generates for these messages without a limit."""
    key = orjson.dumps([messages, None], option=orjson.OPT_SORT_KEYS)
    return textgen.natural_length(textgen.stable_hash(seed, key, 0))


def messages_for(output_tokens: int, text: str = "Tell me about load balancing.", seed: int = 0) -> list[dict[str, Any]]:
    """Messages starting with `text` whose natural length is at least `output_tokens`."""
    if output_tokens > MAX_NATURAL:
        raise ValueError(f"the simulator answers at most {MAX_NATURAL} tokens for a prompt")
    for nonce in range(100_000):
        msgs = [{"role": "user", "content": f"{text} #{nonce}"}]
        if natural_length(msgs, seed) >= output_tokens:
            return msgs
    raise RuntimeError("no prompt found")  # pragma: no cover - 1 in ~200 odds per try


def chat_body(model: str, messages: list[dict[str, Any]], max_tokens: int, stream: bool = False,
              include_usage: bool = True) -> bytes:
    body: dict[str, Any] = {"model": model, "messages": messages, "max_tokens": max_tokens}
    if stream:
        body["stream"] = True
        if include_usage:
            body["stream_options"] = {"include_usage": True}
    return orjson.dumps(body)


# --- balancing workload ------------------------------------------------------------------

_WORDS = ("alpha", "bravo", "charlie", "delta", "echo", "foxtrot", "golf", "hotel", "india", "juliet",
          "kilo", "lima", "mike", "november", "oscar", "papa", "quebec", "romeo", "sierra", "tango")


@dataclass(frozen=True)
class Job:
    at: float  # arrival, seconds from the start
    prompt_tokens: int  # as the simulator counts them (prefill time)
    output_tokens: int
    body: bytes  # stream with usage


def job_mix(n: int, seed: int, model: str) -> list[tuple[int, int, bytes]]:
    """n requests: prompt lengths log-normal (median 300 words, 16..2000), outputs
    log-normal (median 60 tokens, 8..200); fixed seed, so every policy sees the same."""
    rng = random.Random(seed)
    out = []
    for i in range(n):
        words = int(min(2000, max(16, rng.lognormvariate(math.log(300), 0.8))))
        t = int(min(MAX_NATURAL, max(8, rng.lognormvariate(math.log(60), 0.6))))
        text = " ".join(_WORDS[(i + k) % len(_WORDS)] for k in range(words))
        msgs = messages_for(t, f"[{i}] {text}")
        p = tokens.count_chat_prompt(msgs, None)
        out.append((p, t, chat_body(model, msgs, t, stream=True)))
    return out


def poisson_arrivals(n: int, rate: float, seed: int) -> list[float]:
    rng = random.Random(seed)
    t, out = 0.0, []
    for _ in range(n):
        t += rng.expovariate(rate)
        out.append(t)
    return out
