"""Issue #15's four workloads as sessions of requests, with the token ids an engine sees.

Every request carries the chat body the gateway routes by (its policies hash those bytes)
and, for the engine model, the prompt length and the chained KV block hashes of the
simulator's own rendering (`gateway.sim.prefix_cache.render_chat`: tools, then each
message as `<|im_start|> role \\n content <|im_end|>`, then the reply priming, which is
how the next turn's assistant message starts). A session's turns extend one token
sequence, so one chain of block hashes per session serves all its turns: turn k's
prompt is a prefix of turn k+1's, and so is turn k's prompt + answer + EOS.

Sizes (tokens, cl100k; a word of the vocabulary below is ~1.3 tokens):
- chat (Open WebUI): one shared system prompt (~1,000 tokens), 3-10 turns, questions of
  15-150 words, answers of 150-600 tokens resent in the next turn, think time between
  turns exponential with mean 20 s (reading and typing);
- agent: one shared tool schema of ~25 KB (~6,500 tokens), a task, then 4-10 steps each
  adding a tool call (~60 tokens out) and a tool result (80-400 words), 1-3 s of tool time;
- random: single prompts of 300-3,000 words sharing nothing (~400-4,000 tokens);
- skew: half the requests ask a short question about one hot document (~4,000 tokens),
  the other half are random as above.
"""

from __future__ import annotations

import json
import random
from dataclasses import dataclass, field
from typing import Any

from gateway import tokens
from gateway.sim.prefix_cache import IM_END, IM_START

BLOCK = 16  # vLLM's --block-size on CUDA
WORKLOADS = ("chat", "agent", "random", "skew")

_WORDS = ("the of and to in is for on with as by at from this that be are was it an or which cache route "
          "token engine prefix model request backend latency batch queue python system prompt agent tool "
          "schema value field return error state policy load hit miss block memory time data user answer "
          "report table figure window replica region cluster deploy config metric trace span budget").split()


def words(rng: random.Random, n: int) -> str:
    return " ".join(rng.choice(_WORDS) for _ in range(n))


@dataclass
class Turn:
    body: dict[str, Any]  # what the client sends (messages, tools, max_tokens)
    prompt_len: int  # tokens
    out_len: int  # tokens the engine generates, EOS included
    think: float  # seconds from this answer to the next turn


@dataclass
class Session:
    start: float
    turns: list[Turn]
    hashes: list[int] = field(repr=False)  # block hashes of the whole final sequence

    def prompt_hashes(self, t: int) -> list[int]:
        return self.hashes[: self.turns[t].prompt_len // BLOCK]

    def output_hashes(self, t: int) -> list[int]:
        """Full blocks of prompt + output beyond the prompt's (vLLM caches them too)."""
        turn = self.turns[t]
        return self.hashes[turn.prompt_len // BLOCK: (turn.prompt_len + turn.out_len) // BLOCK]


class _Seq:
    """One session's growing token sequence and its block hashes."""

    def __init__(self, prefix: list[int]) -> None:
        self.ids = list(prefix)

    def message(self, role: str, content: str, enc: dict[str, list[int]]) -> None:
        self.ids += [IM_START, *_enc(role, enc), *_enc("\n", enc), *tokens.encode(content), IM_END]

    def hashes(self) -> list[int]:
        out: list[int] = []
        parent = 0
        ids = self.ids
        for s in range(0, len(ids) - BLOCK + 1, BLOCK):
            parent = hash((parent, tuple(ids[s: s + BLOCK])))
            out.append(parent)
        return out


def _enc(text: str, cache: dict[str, list[int]]) -> list[int]:
    ids = cache.get(text)
    if ids is None:
        ids = cache[text] = tokens.encode(text)
    return ids


def _tools(rng: random.Random, kb: int) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    while len(json.dumps(out)) < kb * 1024:
        i = len(out)
        out.append({"type": "function", "function": {
            "name": f"tool_{i}", "description": words(rng, 40),
            "parameters": {"type": "object", "properties": {f"arg{j}": {"type": "string", "description": words(rng, 8)}
                                                            for j in range(4)}}}})
    return out


def sessions(workload: str, rate: float, window: float, seed: int) -> list[Session]:
    """Sessions arriving as a Poisson process during `window` seconds, at `rate` REQUESTS/s
    on average (the session rate is divided by the mean number of turns)."""
    rng = random.Random(seed)
    shared = random.Random(1000)  # the same system prompt, schema and document in every run
    enc: dict[str, list[int]] = {}
    system = {"role": "system", "content": "You are the team's assistant. " + words(shared, 750)}
    tools = _tools(shared, 25)
    tools_ids = tokens.encode(json.dumps(tools, separators=(",", ":"), sort_keys=True))
    document = {"role": "system", "content": "Answer from this document. " + words(shared, 3000)}
    priming = [IM_START, *_enc("assistant", enc), *_enc("\n", enc)][: tokens.REPLY_PRIMING_TOKENS]
    mean_turns = {"chat": 6.5, "agent": 8.0, "random": 1.0, "skew": 1.0}[workload]
    out: list[Session] = []
    t = 0.0
    while True:
        t += rng.expovariate(rate / mean_turns)
        if t >= window:
            return out
        msgs: list[dict[str, Any]] = []
        seq = _Seq(tools_ids if workload == "agent" else [])
        turns: list[Turn] = []
        if workload == "chat":
            msgs.append(system)
            seq.message("system", system["content"], enc)
            plan = [(words(rng, rng.randint(15, 150)), rng.randint(150, 600), rng.expovariate(1 / 20.0))
                    for _ in range(rng.randint(3, 10))]
        elif workload == "agent":
            steps = rng.randint(4, 10)
            plan = [(f"Task: {words(rng, 40)}", rng.randint(40, 80), rng.uniform(1.0, 3.0))]
            plan += [(f"Tool result: {words(rng, rng.randint(80, 400))}", rng.randint(40, 80), rng.uniform(1.0, 3.0))
                     for _ in range(steps - 1)]
        elif workload == "random" or rng.random() >= 0.5:
            plan = [(words(rng, rng.randint(300, 3000)), rng.randint(100, 400), 0.0)]
        else:
            msgs.append(document)
            seq.message("system", document["content"], enc)
            plan = [(words(rng, rng.randint(10, 40)), rng.randint(100, 400), 0.0)]
        for i, (text, out_len, think) in enumerate(plan):
            role = "tool" if text.startswith("Tool result") else "user"
            msg: dict[str, Any] = {"role": role, "content": text}
            msgs.append(msg)
            seq.message(role, text, enc)
            prompt_len = len(seq.ids) + len(priming)
            body: dict[str, Any] = {"model": "m", "messages": list(msgs), "max_tokens": out_len}
            if workload == "agent":
                body["tools"] = tools
            turns.append(Turn(body, prompt_len, out_len, think))
            if i + 1 < len(plan):
                # The answer: out_len - 1 visible tokens, then EOS; the next turn resends it.
                answer = words(rng, max(1, int((out_len - 1) / 1.3)))
                ids = tokens.encode(answer)[: out_len - 1]
                answer = tokens.decode(ids)
                turns[-1].out_len = len(ids) + 1
                msgs.append({"role": "assistant", "content": answer})
                seq.ids += [*priming, *ids, IM_END]
        seq.ids += priming  # the last prompt's reply priming: its last block may end there
        out.append(Session(t, turns, seq.hashes()))
