"""Token estimates for rate limiting: cheap, because they run on every admission of a
key with a token limit (characters / 4, never the tokenizer)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import orjson

if TYPE_CHECKING:
    from gateway.context import RequestContext

DEFAULT_MAX_TOKENS = {"chat": 1024, "completions": 16, "embeddings": 0}
# Routes whose body is a chat-style `messages` list (Anthropic's included).
_MESSAGES_ROUTES = frozenset({"chat", "messages", "count_tokens"})
# Routes that generate nothing: charged their prompt only.
_NO_OUTPUT = frozenset({"embeddings", "rerank", "score", "tokenize", "detokenize", "count_tokens"})
# Where other routes keep their input.
_INPUT_FIELDS = {
    "embeddings": ("input",),
    "responses": ("input", "instructions"),
    "rerank": ("query", "documents"),
    "score": ("text_1", "text_2", "queries", "documents"),
}
MAX_TOKENS_CAP = 4096  # the most a single choice is charged at admission


def _chars(v: Any) -> int:
    if isinstance(v, str):
        return len(v)
    if isinstance(v, list):
        if v and all(isinstance(x, int) for x in v):
            return 4 * len(v)  # token ids
        return sum(_chars(x) for x in v)
    if isinstance(v, dict):
        return _chars(v.get("text"))
    return 0


def rough_prompt_tokens(endpoint: str, body: dict[str, Any] | None) -> int:
    if not isinstance(body, dict):
        return 0
    if endpoint in _MESSAGES_ROUTES:
        msgs = body.get("messages")
        chars = 0
        if isinstance(msgs, list):
            chars = sum(16 + _chars(m.get("content")) for m in msgs if isinstance(m, dict))
        if body.get("tools"):
            chars += len(orjson.dumps(body["tools"]))
        return chars // 4 + 3
    return sum(_chars(body.get(f)) for f in _INPUT_FIELDS.get(endpoint, ("prompt",))) // 4


def admission_cost(endpoint: str, body: dict[str, Any] | None) -> int:
    """Tokens charged up front: rough prompt + requested max output (capped) x choices."""
    prompt = rough_prompt_tokens(endpoint, body)
    if endpoint in _NO_OUTPUT or not isinstance(body, dict):
        return prompt
    mt = body.get("max_completion_tokens") or body.get("max_tokens") or body.get("max_output_tokens")
    out = mt if isinstance(mt, int) and mt > 0 else DEFAULT_MAX_TOKENS.get(endpoint, 1024)
    n = body.get("n")
    choices = n if isinstance(n, int) and 0 < n <= 16 else 1
    return prompt + min(out, MAX_TOKENS_CAP) * choices


def used_tokens(ctx: RequestContext) -> int:
    """Total tokens a finished request used: engine usage, else a cheap estimate."""
    if ctx.usage is not None:
        total = ctx.usage.get("total_tokens")
        if isinstance(total, int):
            return total
        return int(ctx.usage.get("prompt_tokens") or 0) + int(ctx.usage.get("completion_tokens") or 0)
    if ctx.backend is None:
        return 0
    # Cut short: roughly one token per streamed event (the meter's ledger has the exact count).
    out = ctx.delivered_events + ctx.delivered_dropped if ctx.stream else ctx.delivered_bytes // 4
    return rough_prompt_tokens(ctx.endpoint, ctx.body) + out
