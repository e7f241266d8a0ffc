"""A backend: one OpenAI-compatible base URL a request can be sent to.

The gateway may have spawned the engine behind it (engines/supervisor) or it may be an
external endpoint; both are a `Backend` and both sit in a `routing.pool.Pool`.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from enum import StrEnum


class BackendState(StrEnum):
    STARTING = "starting"
    READY = "ready"
    UNHEALTHY = "unhealthy"
    RESTARTING = "restarting"
    DRAINING = "draining"
    SLEEPING = "sleeping"  # vLLM sleep mode: process up, weights off the device
    WAKING = "waking"
    STOPPED = "stopped"
    FAILED = "failed"


# After a connection failure an external endpoint sits out this long before it is tried
# again (spawned engines are brought back by their health checks instead).
PASSIVE_COOLDOWN_S = 5.0
# A non-stream answer shorter than this says nothing about the engine's per-token speed.
NON_STREAM_MIN_TOKENS = 16


@dataclass(frozen=True)
class Refusal:
    """Why a backend cannot serve until the configuration changes (its engine rejects the
    gateway's key): what requests to its pool get at once instead of queueing for it."""

    status: int
    code: str
    message: str


@dataclass
class CacheStats:
    """Prefix-cache figures of one backend, for /metrics. Counters only grow."""

    # From the answers' usage (every policy): prompt tokens and those the engine served
    # from its prefix cache (usage.prompt_tokens_details.cached_tokens, when reported).
    prompt_tokens: int = 0
    cached_tokens: int = 0
    # The engine's own counters, scraped from /metrics (vLLM: vllm:prefix_cache_queries /
    # _hits; llama.cpp: prompt tokens processed + cached), in tokens; None if not exposed.
    engine_queries: float | None = None
    engine_hits: float | None = None
    # What a locality-aware policy predicted (prompt bytes sent, of them expected cached)
    # and why it routed here: by a cached prefix, by conversation affinity, by load alone;
    # and how often a cached prefix here was passed over because the backend was overloaded.
    predicted_bytes: int = 0
    predicted_hit_bytes: int = 0
    routed: dict[str, int] = field(default_factory=dict)
    skipped_overloaded: int = 0


@dataclass(eq=False)
class Backend:
    id: str
    pool: str
    url: str  # base URL ending in /v1
    max_concurrency: int
    api_key: str | None = None
    source: str = "endpoint"  # "endpoint" | "spawned"
    state: BackendState = BackendState.READY
    outstanding: int = 0
    # Engine-reported queue (from its /metrics), for traffic that did not come through us.
    engine_running: float = 0.0
    engine_waiting: float = 0.0
    # Observed speed, exponentially weighted: seconds per output token and to first token.
    ewma_tpot: float | None = None
    ewma_ttft: float | None = None
    # When each estimate last learnt something (speed_aware ages the older ones).
    ttft_observed_at: float = field(default_factory=time.monotonic)
    tpot_observed_at: float = field(default_factory=time.monotonic)
    down_until: float = 0.0
    last_error: str | None = None
    served_model: str | None = None  # first name the engine serves, when known
    max_model_len: int | None = None  # context length the engine reports, when known
    # The engine's batch size (max-num-seqs / max-running-requests), when something told
    # us: read by the speed-aware policy; None means "unknown", never "unlimited".
    engine_capacity: int | None = None
    restarts: int = 0  # times the supervisor restarted the engine behind it
    refusal: Refusal | None = None  # set with state FAILED when retrying cannot help
    # KV cache size in tokens (vLLM's cache_config_info: num_gpu_blocks x block_size), when known.
    kv_capacity_tokens: int | None = None
    cache: CacheStats = field(default_factory=CacheStats)

    def balancing_view(self) -> dict[str, float | None]:
        """What the balancers read, for /admin/backends: an operator asking why a replica
        gets no traffic sees the queue and the speed estimates the policies compared."""
        now = time.monotonic()
        return {
            "engine_running": self.engine_running,
            "engine_waiting": self.engine_waiting,
            "ewma_ttft": None if self.ewma_ttft is None else round(self.ewma_ttft, 4),
            "ewma_tpot": None if self.ewma_tpot is None else round(self.ewma_tpot, 5),
            "ttft_age": None if self.ewma_ttft is None else round(now - self.ttft_observed_at, 1),
            "tpot_age": None if self.ewma_tpot is None else round(now - self.tpot_observed_at, 1),
        }

    @property
    def routable(self) -> bool:
        return self.state is BackendState.READY and self.down_until <= time.monotonic()

    @property
    def has_capacity(self) -> bool:
        return self.outstanding < self.max_concurrency

    def mark_connect_failure(self, reason: str) -> None:
        """Passive health: connection refused/reset takes the backend out at once."""
        self.last_error = reason
        self.down_until = time.monotonic() + PASSIVE_COOLDOWN_S

    def observe(self, ttft: float | None, duration: float, output_tokens: int) -> None:
        """Feed a finished request's timing into the speed estimates (alpha 0.2).

        `ttft` is None for non-stream requests, whose first byte is also their last.
        """
        tpot: float | None = None
        now = time.monotonic()
        if ttft is not None:
            self.ewma_ttft = ttft if self.ewma_ttft is None else 0.8 * self.ewma_ttft + 0.2 * ttft
            self.ttft_observed_at = now
            if output_tokens > 1 and duration > ttft:
                tpot = (duration - ttft) / (output_tokens - 1)
        elif output_tokens >= NON_STREAM_MIN_TOKENS and duration > 0.0:
            # Non-stream: only the whole duration is known; prefill is folded into the rate,
            # which only a long enough answer amortises. A 2-token answer that waited 1 s
            # for its prefill would read as 0.5 s per token (a real vLLM replica, rated 100x
            # too slow by one such answer, lost every request to a full one), so short
            # answers teach nothing here.
            tpot = duration / output_tokens
        if tpot is not None:
            self.ewma_tpot = tpot if self.ewma_tpot is None else 0.8 * self.ewma_tpot + 0.2 * tpot
            self.tpot_observed_at = now
