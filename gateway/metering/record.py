"""One usage record per request, built from a finished `RequestContext`.

Building a record on the request path must cost next to nothing, so `from_context(ctx,
lazy=True)` only copies scalars and keeps references to the body and the delivered
events; the tokenizing (when the engine reported no usage) happens later in
`finish_estimate()`, which the meter's flush task runs in a worker thread.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from gateway import tokens

from . import estimate

if TYPE_CHECKING:
    from gateway.context import RequestContext

# Columns, in storage order (the SQLite table and CSV exports use this order).
FIELDS = (
    "ts",
    "request_id",
    "key",
    "pool",
    "model",
    "backend",
    "endpoint",
    "prompt_tokens",
    "completion_tokens",
    "total_tokens",
    "status",
    "stream",
    "latency",
    "ttft",
    "user",
    "estimated",
    "error",
    "audio_seconds",
)


@dataclass
class _Pending:
    """What an estimate needs; dropped once estimated so the body can be freed."""

    endpoint: str
    body: dict[str, Any] | None
    delivered: list[bytes | bytearray]
    dropped: int = 0  # events relayed past the context's keep limit
    prompt: int | None = None  # the engine's own prompt count, when a stream reported it early
    count: estimate.Count = tokens.count_text  # the pool's model tokenizer, when known


@dataclass(slots=True)  # one per request, built on the request path
class UsageRecord:
    ts: float  # wall-clock time the request started (unix seconds)
    request_id: str = ""
    key: str | None = None
    pool: str | None = None
    model: str | None = None  # the name the client asked for (pool name or alias)
    backend: str | None = None
    endpoint: str = ""
    prompt_tokens: int = 0
    completion_tokens: int = 0
    total_tokens: int = 0
    status: int = 0
    stream: bool = False
    latency: float = 0.0
    ttft: float | None = None
    user: str | None = None
    estimated: bool = False  # tokens counted by the gateway, not reported by the engine
    error: str | None = None
    # Seconds of audio transcribed (rounded up per request, as engines and OpenAI bill them).
    audio_seconds: int = 0
    _pending: _Pending | None = field(default=None, repr=False, compare=False)

    @property
    def estimate_done(self) -> bool:
        return self._pending is None

    def finish_estimate(self) -> UsageRecord:
        """Fill in estimated tokens (CPU: tokenizes). Idempotent; returns self."""
        p = self._pending
        if p is None:
            return self
        self._pending = None
        reported = None if p.endpoint == "embeddings" else estimate.reported_usage(p.delivered)
        if reported is not None:
            # The engine's usage chunk did reach the client; it is exact.
            self._set_usage(reported)
            self.estimated = False
            return self
        if p.endpoint == "embeddings":
            started, completion = self.status < 400, 0
        else:
            started, completion = estimate.completion(p.delivered, p.dropped, p.count)
        if not started and p.prompt is None:
            # No output reached the client: no evidence the engine even read the prompt
            # (engines count prompt tokens at prefill, which ends with the first token).
            return self
        self.prompt_tokens = p.prompt if p.prompt is not None else estimate.prompt_tokens(p.endpoint, p.body, p.count)
        self.completion_tokens = completion
        self.total_tokens = self.prompt_tokens + completion
        return self

    def _set_usage(self, usage: dict[str, Any]) -> None:
        self.prompt_tokens = _int(usage.get("prompt_tokens"))
        self.completion_tokens = _int(usage.get("completion_tokens"))
        total = usage.get("total_tokens")
        self.total_tokens = (
            _int(total) if isinstance(total, int) else self.prompt_tokens + self.completion_tokens
        )

    def to_dict(self) -> dict[str, Any]:
        # Not dataclasses.asdict: it deep-copies (the pending estimate input included)
        # and cost ~3% of the gateway's CPU per request in the benchmarks.
        return {f: getattr(self, f) for f in FIELDS}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> UsageRecord:
        return cls(**{k: d[k] for k in FIELDS if k in d})


def _int(v: Any) -> int:
    return v if isinstance(v, int) and not isinstance(v, bool) else 0


def from_context(ctx: RequestContext, lazy: bool = False) -> UsageRecord:
    """The record of a finished request. With `lazy`, an estimate is deferred to `finish_estimate()`."""
    rec = UsageRecord(
        ts=ctx.started_wall,
        request_id=ctx.request_id,
        key=ctx.key.name if ctx.key is not None else None,
        pool=ctx.pool.name if ctx.pool is not None else None,
        model=ctx.model_requested,
        backend=ctx.backend.id if ctx.backend is not None else None,
        endpoint=ctx.endpoint,
        status=ctx.status,
        stream=ctx.stream,
        latency=round(ctx.duration, 6),
        ttft=None if ctx.ttft is None else round(ctx.ttft, 6),
        user=ctx.user,
        error=ctx.error,
    )
    if ctx.audio_upload:
        rec.audio_seconds = billed_audio_seconds(ctx)
    partial = ctx.usage is not None and ctx.usage_needs_end and not ctx.completed
    if ctx.usage is not None and not partial:
        rec._set_usage(ctx.usage)
        rec.estimated = ctx.usage_estimated
    elif ctx.backend is not None:
        # Dispatched to an engine but no (final) usage came back: count what we can see.
        rec.estimated = True
        known = _int(ctx.usage.get("prompt_tokens")) if ctx.usage is not None else None
        count = ctx.pool.tokenizer.count_text if ctx.pool is not None else tokens.count_text
        rec._pending = _Pending(ctx.endpoint, ctx.body, ctx.delivered, ctx.delivered_dropped, known, count)
        if not lazy:
            rec.finish_estimate()
    # Never dispatched (auth, limits, unknown model, queue full): no tokens were used.
    return rec


def billed_audio_seconds(ctx: RequestContext) -> int:
    """Seconds of audio an upload request is billed: the engine's own figure (vLLM's
    `usage: {type: duration, seconds}`), else the file header's, rounded up the same way.
    Only for an answer that started: a refused or failed upload was not transcribed."""
    if ctx.first_byte_at is None or ctx.status >= 400:
        return 0
    reported = ctx.usage.get("audio_seconds") if ctx.usage is not None else None
    if isinstance(reported, (int, float)) and not isinstance(reported, bool):
        return math.ceil(reported)
    return math.ceil(ctx.audio_seconds) if ctx.audio_seconds is not None else 0
