"""What a balancing policy may know about one request, and how it ended.

`RouteRequest` is built once per request by the proxy and handed to every policy's
`choose` and hooks. It is cheap to build: the prompt's prefix blocks are computed only
if a policy reads them (`blocks`), once, and then shared by `choose`, `on_dispatch` and
`on_complete`. Policies that ignore locality never pay for hashing.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import cached_property
from typing import Any

from .prefix import PromptBlocks, prompt_blocks

DEFAULT_BLOCK_BYTES = 512


@dataclass(frozen=True)
class RouteRequest:
    endpoint: str  # "chat" | "completions" | "embeddings"
    body: dict[str, Any] = field(repr=False, compare=False)  # the parsed client body; read-only
    block_bytes: int = DEFAULT_BLOCK_BYTES

    @cached_property
    def blocks(self) -> PromptBlocks:
        """The prompt's prefix blocks (computed on first use; frozen dataclasses still allow
        `cached_property`, which writes the instance dict directly)."""
        return prompt_blocks(self.endpoint, self.body, self.block_bytes)


# A request with nothing to route by (retries of unknown shape, tests of plain load policies).
def bare_request() -> RouteRequest:
    return RouteRequest(endpoint="chat", body={})


@dataclass(frozen=True, slots=True)
class Completion:
    """How a dispatched request ended, as far as a policy cares. Token counts are the
    engine's own (`usage`), None when it sent none."""

    ok: bool  # the engine finished the answer normally
    prompt_tokens: int | None = None
    # usage.prompt_tokens_details.cached_tokens (vLLM with --enable-prompt-tokens-details,
    # llama.cpp, SGLang): the prompt tokens the engine served from its prefix cache.
    cached_tokens: int | None = None
    ttft: float | None = None  # seconds to the first byte (streams only)
    duration: float = 0.0  # seconds from the first upstream call to the end; 0.0: not known
    output_tokens: int = 0


def completion_from_usage(
    ok: bool, usage: dict[str, Any] | None, ttft: float | None, duration: float
) -> Completion:
    if not usage:
        return Completion(ok=ok, ttft=ttft, duration=duration)
    details = usage.get("prompt_tokens_details")
    cached = details.get("cached_tokens") if isinstance(details, dict) else None
    prompt = usage.get("prompt_tokens")
    out = usage.get("completion_tokens")
    return Completion(
        ok=ok,
        prompt_tokens=prompt if isinstance(prompt, int) and not isinstance(prompt, bool) else None,
        # vLLM omits the details when nothing was cached: a present prompt count with no
        # details means 0 cached only if the engine is known to report them; keep None.
        cached_tokens=cached if isinstance(cached, int) and not isinstance(cached, bool) else None,
        ttft=ttft,
        duration=duration,
        output_tokens=out if isinstance(out, int) and not isinstance(out, bool) else 0,
    )
