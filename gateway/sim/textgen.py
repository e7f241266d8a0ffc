"""Deterministic generated text whose token count is known exactly.

Every generated token is a plain lowercase word with a leading space that is ONE
cl100k token. cl100k's pre-tokenizer splits text before each ` word`, so a
concatenation of such words re-tokenizes to exactly one token per word: usage
`completion_tokens == tokens.count_text(text)` holds by construction, and the
gateway's fallback metering (same tokenizer) agrees with the engine to the token.

Reasoning layouts add the tags' own cl100k tokens, also verified at import time.
"""

from __future__ import annotations

import hashlib
import json
import random
from dataclasses import dataclass, field
from typing import Any

from gateway import tokens

_WORDS = """
the model data system time value result answer question token network server
request response stream batch cache memory query layer graph vector matrix input
output signal process thread engine kernel device driver buffer packet router
node cluster region zone store table index record field column file path
string number list array object function method class module package library
version update change test check build deploy start stop run load save read
write open close send receive parse format order sort filter group count sum
mean rate limit error state event message queue worker task job step phase cycle
round point line plane shape color light sound water river mountain forest field
city house road bridge window door table chair paper book page word letter name
title story idea plan goal rule law fact truth reason logic proof theory method
level scale range measure weight speed power energy force heat cold green blue
red black white small large long short high low fast slow early late first last
next good great simple clear free open real true new old best better more most
""".split()


def _single_token_words(words: list[str]) -> tuple[str, ...]:
    seen: dict[str, None] = {}
    for w in words:
        piece = " " + w
        if w.isalpha() and w.islower() and len(tokens.encode(piece)) == 1:
            seen[piece] = None
    return tuple(seen)


VOCAB: tuple[str, ...] = _single_token_words(_WORDS)


def _pieces(text: str) -> list[str]:
    return [tokens.decode([t]) for t in tokens.encode(text)]


# Tag token pieces, as they tokenize between two vocabulary words.
OPEN_TAG = "<think>\n"
CLOSE_TAG = "\n</think>\n\n"
OPEN_PIECES: list[str] = _pieces(OPEN_TAG + " the")[:-1]
CLOSE_PIECES: list[str] = _pieces(" the" + CLOSE_TAG + " the")[1:-1]
if "".join(OPEN_PIECES) != OPEN_TAG or "".join(CLOSE_PIECES) != CLOSE_TAG:  # pragma: no cover
    raise RuntimeError("think-tag pieces do not tokenize on word boundaries with this tokenizer")


def stable_hash(*parts: bytes | str | int) -> int:
    """64-bit hash of the parts, stable across processes (unlike hash())."""
    h = hashlib.blake2b(digest_size=8)
    for part in parts:
        if isinstance(part, int):
            part = str(part)
        if isinstance(part, str):
            part = part.encode()
        h.update(part)
        h.update(b"\x1f")
    return int.from_bytes(h.digest(), "little")


def natural_length(key: int) -> int:
    """The length at which the simulated model 'emits EOS' for this prompt/choice: 8..200."""
    return 8 + key % 193


def words(key: int, count: int) -> list[str]:
    return random.Random(key).choices(VOCAB, k=count) if count > 0 else []


@dataclass
class ToolCall:
    id: str
    name: str
    arguments: str  # JSON text, possibly cut short by max_tokens
    argument_pieces: list[str]  # one cl100k token each, in stream order


@dataclass
class ChoicePlan:
    """Everything one choice will output; streams replay `deltas` one per ITL step."""

    # (kind, text, tokens): kind is "content" or "reasoning"; tokens is how many generated
    # tokens the delta carries (1, except a merged think-tag delta or a stop-cut piece).
    deltas: list[tuple[str, str, int]] = field(default_factory=list)
    completion_tokens: int = 0
    finish_reason: str = "stop"
    stop_reason: str | None = None
    tool_call: ToolCall | None = None

    def text(self, kind: str) -> str | None:
        parts = [t for k, t, _ in self.deltas if k == kind]
        return "".join(parts) if parts else None

    @property
    def steps(self) -> int:
        """How many ITL steps this choice needs. A tool call's plan starts with its
        reasoning `deltas` (if any), then the name and one step per argument piece."""
        if self.tool_call is not None:
            return len(self.deltas) + 1 + len(self.tool_call.argument_pieces)
        return len(self.deltas)

    @property
    def reasoning_tokens(self) -> int:
        """What vLLM reports as `completion_tokens_details.reasoning_tokens`."""
        return sum(n for k, _, n in self.deltas if k == "reasoning")

    def step_tokens(self, step: int) -> int:
        if step < len(self.deltas):
            return self.deltas[step][2]
        assert self.tool_call is not None
        return tokens.count_text(self.tool_call.name) if step == len(self.deltas) else 1

    def tokens_in_first(self, steps: int) -> int:
        """Tokens produced by the first `steps` steps (what an abort at that point generated)."""
        return sum(self.step_tokens(i) for i in range(min(steps, self.steps)))


def _apply_stop(pieces: list[tuple[str, str]], stop: list[str]) -> tuple[list[tuple[str, str]], str | None]:
    """Cut at the earliest stop string (excluded from output, as vLLM does)."""
    if not stop:
        return pieces, None
    full = "".join(t for _, t in pieces)
    best, which = -1, None
    for s in stop:
        if s:
            i = full.find(s)
            if i != -1 and (best == -1 or i < best):
                best, which = i, s
    if which is None:
        return pieces, None
    out: list[tuple[str, str]] = []
    pos = 0
    for kind, t in pieces:
        if pos + len(t) <= best:
            out.append((kind, t))
        else:
            if best > pos:
                out.append((kind, t[: best - pos]))
            break
        pos += len(t)
    return out, which


def plan_text(key: int, limit: int, natural: int, stop: list[str], reasoning: str = "none",
              think_split: bool = True) -> ChoicePlan:
    """Plan one choice of text output.

    `natural` is where the model would stop by itself; `limit` is max_tokens (or the
    room left in the context). reasoning: none|field|think-tags|r1; about the first 40%
    of the generated tokens are reasoning, whichever of the two ends the output.
    think_split: True streams the closing tag over several deltas (`\\n`, `</`, `think`,
    `>\\n\\n`); False merges `\\n</think>\\n\\n` and the next word into one delta.
    """
    pieces: list[tuple[str, str]]
    merge_from = -1  # index of the closing tag's first piece (think-tags/r1)
    n_out = min(natural, limit)  # the layout (40% reasoning) spans what is actually generated
    if reasoning == "none":
        pieces = [("content", w) for w in words(key, n_out)]
    else:
        n_reason = max(1, round(n_out * 0.4))
        tag_tokens = len(CLOSE_PIECES) + (len(OPEN_PIECES) if reasoning == "think-tags" else 0)
        if reasoning == "field":
            tag_tokens = 0  # the simulated parser strips tags; usage counts what is sent
        n_answer = max(1, n_out - n_reason - tag_tokens)
        ws = words(key, n_reason + n_answer)
        if reasoning == "field":
            pieces = [("reasoning", w) for w in ws[:n_reason]] + [("content", w) for w in ws[n_reason:]]
        else:
            pieces = [("content", p) for p in (OPEN_PIECES if reasoning == "think-tags" else [])]
            pieces += [("content", w) for w in ws[:n_reason]]
            merge_from = len(pieces)
            pieces += [("content", p) for p in CLOSE_PIECES]
            pieces += [("content", w) for w in ws[n_reason:]]
    finish = "length" if limit < natural else "stop"
    if len(pieces) > limit:  # tiny budgets: the tags do not fit, the output is cut inside them
        pieces = pieces[:limit]
        finish = "length"
    pieces, stop_hit = _apply_stop(pieces, stop)
    deltas = [(k, t, 1) for k, t in pieces]
    n_tokens = len(pieces)
    if stop_hit is not None:
        finish = "stop"
        # A stop string may cut a token in half; usage is what the kept text tokenizes to.
        n_tokens = tokens.count_text("".join(t for _, t in pieces))
        if deltas and n_tokens != len(deltas):
            k, t, _ = deltas[-1]
            deltas[-1] = (k, t, max(0, n_tokens - (len(deltas) - 1)))
    elif not think_split and 0 <= merge_from < len(pieces):
        # One delta carrying "\\n</think>\\n\\n" plus the first answer word, as engines that
        # detokenize several tokens per step do. The token count is unchanged.
        end = min(len(pieces), merge_from + len(CLOSE_PIECES) + 1)
        merged = "".join(t for _, t in pieces[merge_from:end])
        deltas = deltas[:merge_from] + [("content", merged, end - merge_from)] + deltas[end:]
    return ChoicePlan(deltas=deltas, completion_tokens=n_tokens, finish_reason=finish, stop_reason=stop_hit)


# ---- tool calls -------------------------------------------------------------------

def _value(schema: Any, rng: random.Random, depth: int) -> Any:
    if not isinstance(schema, dict):
        return "".join(rng.choices(VOCAB, k=2)).strip()
    if isinstance(schema.get("enum"), list) and schema["enum"]:
        return rng.choice(schema["enum"])
    kind = schema.get("type")
    if isinstance(kind, list):
        kind = next((k for k in kind if k != "null"), "string")
    if kind == "integer":
        return rng.randint(0, 100)
    if kind == "number":
        return round(rng.uniform(0, 100), 2)
    if kind == "boolean":
        return rng.random() < 0.5
    if kind == "array":
        return [_value(schema.get("items"), rng, depth + 1) for _ in range(rng.randint(1, 2))] if depth < 3 else []
    if kind == "object":
        return _object(schema, rng, depth + 1) if depth < 3 else {}
    return "".join(rng.choices(VOCAB, k=rng.randint(1, 3))).strip()


def _object(schema: dict[str, Any], rng: random.Random, depth: int) -> dict[str, Any]:
    props = schema.get("properties")
    if not isinstance(props, dict):
        return {}
    return {str(name): _value(sub, rng, depth) for name, sub in props.items()}


def plan_tool_call(key: int, tool: dict[str, Any], limit: int, call_id: str, reasoning: str = "none") -> ChoicePlan:
    """A call of `tool` with arguments generated from its JSON schema (deterministic per key).

    reasoning "field": the model thinks first (1-12 words in the reasoning field), as
    real vLLM with a reasoning parser streams reasoning deltas before the call. A budget
    that ends while reasoning leaves no call (finish `length`, content null)."""
    deltas: list[tuple[str, str, int]] = []
    if reasoning == "field":
        thought = words(stable_hash(key, "tool-reasoning"), 1 + key % 12)
        deltas = [("reasoning", w, 1) for w in thought[:limit]]
        if len(thought) >= limit:
            return ChoicePlan(deltas=deltas, completion_tokens=len(deltas), finish_reason="length")
        limit -= len(deltas)
    fn = tool.get("function") if isinstance(tool.get("function"), dict) else {}
    name = str(fn.get("name") or "tool")
    params = fn.get("parameters") if isinstance(fn.get("parameters"), dict) else {}
    args = json.dumps(_object(params, random.Random(key), 0), ensure_ascii=True)
    name_tokens = tokens.count_text(name)
    arg_pieces = _pieces(args)
    finish = "tool_calls"
    room = max(0, limit - name_tokens)
    if len(arg_pieces) > room:
        arg_pieces = arg_pieces[:room]
        finish = "length"
    call = ToolCall(id=call_id, name=name, arguments="".join(arg_pieces), argument_pieces=arg_pieces)
    return ChoicePlan(deltas=deltas, completion_tokens=len(deltas) + name_tokens + len(arg_pieces),
                      finish_reason=finish, tool_call=call)


# ---- embeddings ---------------------------------------------------------------------

def embedding(key: int, dim: int) -> list[float]:
    """A deterministic unit vector: hash-seeded normal samples, normalised."""
    rng = random.Random(key)
    vec = [rng.gauss(0.0, 1.0) for _ in range(dim)]
    return normalise(vec)


def normalise(vec: list[float]) -> list[float]:
    norm = sum(x * x for x in vec) ** 0.5 or 1.0
    return [x / norm for x in vec]
