"""Prometheus metrics for `GET /metrics`, in a per-app registry (no global state).

Metric names are fixed: the Grafana dashboard in deploy/ uses them.

Per-request series are updated by `observe_request(ctx)` when a request ends (a few
dict lookups and lock-free-ish increments). Everything that describes current state
(backends, pools, the usage buffer) and the token counters are computed at scrape time
by a custom collector from `GatewayState`, so the hot path does not pay for them.

Label cardinality stays bounded: pools and endpoints come from the config, keys are key
NAMES (never hashes or user ids), and `metrics.key_label: false` replaces every key
label with "_" for deployments with very many keys.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from .metering.record import billed_audio_seconds
from .routing.backend import BackendState

if TYPE_CHECKING:
    from .context import RequestContext
    from .state import GatewayState

NONE = "_none"  # label value when a request never got as far as a pool or key
HIDDEN = "_"  # key label value when `metrics.key_label` is false

_DURATION_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 20, 30, 60, 120, 300, 600)
_TTFT_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120)
# Engine loads: a wake takes a second or two, a cold start seconds to minutes.
_LOAD_BUCKETS = (0.1, 0.25, 0.5, 1, 2.5, 5, 10, 20, 30, 60, 120, 300, 600, 900)
# The gateway's own share of a request should be around a millisecond.
_OVERHEAD_BUCKETS = (0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1)


class Metrics:
    def __init__(self, state: GatewayState) -> None:
        self.state = state
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.requests = Counter(
            "gateway_requests", "Requests by pool, key, endpoint and HTTP status.",
            ["pool", "key", "endpoint", "status"], registry=r,
        )  # fmt: skip
        self.duration = Histogram(
            "gateway_request_duration_seconds", "Time from request arrival to the end of the response.",
            ["pool", "endpoint"], buckets=_DURATION_BUCKETS, registry=r,
        )  # fmt: skip
        self.ttft = Histogram(
            "gateway_time_to_first_token_seconds", "Streams: time from request arrival to the first event sent.",
            ["pool"], buckets=_TTFT_BUCKETS, registry=r,
        )  # fmt: skip
        self.overhead = Histogram(
            "gateway_overhead_seconds", "Request time not spent waiting on the engine.",
            ["pool"], buckets=_OVERHEAD_BUCKETS, registry=r,
        )  # fmt: skip
        self.limited = Counter(
            "gateway_rate_limited", "Requests refused by a key's rate limit or budget.",
            ["key", "reason"], registry=r,
        )  # fmt: skip
        self.engine_load = Histogram(
            "gateway_engine_load_seconds", "Spawned engines: cold start to READY.",
            ["pool"], buckets=_LOAD_BUCKETS, registry=r,
        )  # fmt: skip
        self.engine_wake = Histogram(
            "gateway_engine_wake_seconds", "Spawned engines: wake from sleep mode to READY.",
            ["pool"], buckets=_LOAD_BUCKETS, registry=r,
        )  # fmt: skip
        self.audio_seconds = Counter(
            "gateway_audio_seconds", "Seconds of audio transcribed (billed: rounded up per request), by pool and key.",
            ["pool", "key"], registry=r,
        )  # fmt: skip
        self.load_wait = Histogram(
            "gateway_request_load_wait_seconds",
            "Requests that found their pool's engines stopped or asleep: time until they got a backend.",
            ["pool"], buckets=_LOAD_BUCKETS, registry=r,
        )  # fmt: skip
        # (pool, key name) -> [prompt, completion] from engine-reported usage; the meter
        # adds the tokens of records it had to estimate (see `_StateCollector`).
        self.tokens: dict[tuple[str, str], list[int]] = {}
        self._children: dict[tuple[int, tuple[str, ...]], Any] = {}
        r.register(_StateCollector(self))

    def key_label(self, name: str | None) -> str:
        if not self.state.config.metrics.key_label:
            return HIDDEN
        return name or NONE

    # --- request path -----------------------------------------------------------------

    def observe_request(self, ctx: RequestContext) -> None:
        """Count one finished request. Called once per request, never raises on odd contexts."""
        pool = ctx.pool.name if ctx.pool is not None else NONE
        key_name = ctx.key.name if ctx.key is not None else None
        duration = ctx.duration
        self._child(self.requests, (pool, self.key_label(key_name), ctx.endpoint, str(ctx.status))).inc()
        self._child(self.duration, (pool, ctx.endpoint)).observe(duration)
        ttft = ctx.ttft
        if ctx.stream and ttft is not None and ctx.status < 400:
            self._child(self.ttft, (pool,)).observe(ttft)
        if ctx.upstream_started is not None:
            self._child(self.overhead, (pool,)).observe(max(0.0, duration - ctx.upstream_time))
        usage = ctx.usage
        if usage is not None:
            acc = self.tokens.get((pool, key_name or NONE))
            if acc is None:
                acc = self.tokens[(pool, key_name or NONE)] = [0, 0]
            acc[0] += _int(usage.get("prompt_tokens"))
            acc[1] += _int(usage.get("completion_tokens"))
        if ctx.audio_upload:
            seconds = billed_audio_seconds(ctx)
            if seconds:
                self._child(self.audio_seconds, (pool, self.key_label(key_name))).inc(seconds)
        refused = getattr(ctx.admission, "refused", None)
        if refused:
            self.rate_limited(key_name or NONE, refused)

    def _child(self, metric: Any, labels: tuple[str, ...]) -> Any:
        # prometheus_client's labels() takes a lock and validates every call; the label
        # sets are few and long-lived, so remember each child.
        k = (id(metric), labels)
        child = self._children.get(k)
        if child is None:
            child = self._children[k] = metric.labels(*labels)
        return child

    def engine_loaded(self, pool: str, seconds: float) -> None:
        self._child(self.engine_load, (pool,)).observe(seconds)

    def engine_woken(self, pool: str, seconds: float) -> None:
        self._child(self.engine_wake, (pool,)).observe(seconds)

    def load_waited(self, pool: str, seconds: float) -> None:
        self._child(self.load_wait, (pool,)).observe(seconds)

    def rate_limited(self, key_name: str, reason: str) -> None:
        self.limited.labels(self.key_label(key_name), reason).inc()

    def render(self) -> tuple[bytes, str]:
        """The exposition text and its content type."""
        return generate_latest(_WithoutCreated(self.registry)), CONTENT_TYPE_LATEST  # type: ignore[arg-type]


class _WithoutCreated:
    """The registry minus prometheus_client's `*_created` series: one extra gauge per
    labelled child that the dashboard never reads (the library can only drop them
    process-wide, which would reach into other registries)."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.registry = registry

    def collect(self) -> Iterator[Metric]:
        for metric in self.registry.collect():
            metric.samples = [s for s in metric.samples if not s.name.endswith("_created")]
            yield metric


def _int(v: object) -> int:
    return v if isinstance(v, int) and not isinstance(v, bool) else 0


class _StateCollector(Collector):
    """Series computed at scrape time from the gateway state."""

    def __init__(self, metrics: Metrics) -> None:
        self.m = metrics

    def describe(self) -> Iterator[Metric]:
        return iter(())  # collected dynamically; nothing to check at registration

    def collect(self) -> Iterator[Metric]:
        state = self.m.state
        outstanding = GaugeMetricFamily(
            "gateway_backend_outstanding", "Requests in flight per backend.", labels=["pool", "backend"]
        )
        up = GaugeMetricFamily(
            "gateway_backend_up", "1 when the backend is READY.", labels=["pool", "backend"]
        )
        restarts = CounterMetricFamily(
            "gateway_backend_restarts", "Engine restarts by the supervisor.", labels=["pool", "backend"]
        )
        queue = GaugeMetricFamily(
            "gateway_pool_queue_depth", "Requests waiting for a backend.", labels=["pool"]
        )
        states = GaugeMetricFamily(
            "gateway_backend_state", "1 for the backend's current state (one series per state).",
            labels=["pool", "backend", "state"],
        )  # fmt: skip
        swaps = CounterMetricFamily(
            "gateway_swaps", "Times a pool's engines were swapped in onto devices another pool held.", labels=["pool"]
        )
        for name, pool in state.pools.items():
            queue.add_metric([name], pool.queued)
            for b in pool.backends:
                outstanding.add_metric([name, b.id], b.outstanding)
                up.add_metric([name, b.id], 1.0 if b.state == "ready" else 0.0)
                restarts.add_metric([name, b.id], float(b.restarts))
                for st in BackendState:
                    states.add_metric([name, b.id, st.value], 1.0 if b.state is st else 0.0)
        done = state.supervisor.swaps() if state.supervisor is not None else {}
        for name in state.pools:
            swaps.add_metric([name], float(done.get(name, 0)))
        yield from (outstanding, up, restarts, queue, states, swaps)
        yield from _prefix_cache(state)
        yield from self._tokens(state)
        meter = state.meter
        dropped = CounterMetricFamily(
            "gateway_usage_records_dropped", "Usage records dropped because the buffer was full."
        )
        dropped.add_metric([], float(getattr(meter, "dropped", 0) or 0))
        buffered = GaugeMetricFamily("gateway_usage_buffer_records", "Usage records waiting to be written.")
        buffered.add_metric([], float(getattr(meter, "buffered", 0) or 0))
        yield from (dropped, buffered)
        degraded = CounterMetricFamily(
            "gateway_ratelimit_degraded",
            "Rate-limit decisions taken by this replica alone (its share of each limit) because "
            "Redis was unreachable: timeout, error, or backoff (right after a failure).",
            labels=["reason"],
        )
        for reason, n in sorted(getattr(state.limiter, "degraded", {}).items()):
            degraded.add_metric([reason], float(n))
        yield degraded

    def _tokens(self, state: GatewayState) -> Iterator[Metric]:
        totals: dict[tuple[str, str], list[int]] = {}
        sources = [self.m.tokens, getattr(state.meter, "estimated_tokens", None) or {}]
        for src in sources:
            for (pool, key), (p, c) in list(src.items()):
                acc = totals.setdefault((pool, self.m.key_label(key)), [0, 0])
                acc[0] += p
                acc[1] += c
        prompt = CounterMetricFamily(
            "gateway_prompt_tokens", "Prompt tokens by pool and key.", labels=["pool", "key"]
        )
        completion = CounterMetricFamily(
            "gateway_completion_tokens", "Completion tokens by pool and key.", labels=["pool", "key"]
        )
        for (pool, key), (p, c) in sorted(totals.items()):
            prompt.add_metric([pool, key], float(p))
            completion.add_metric([pool, key], float(c))
        yield from (prompt, completion)


def _prefix_cache(state: GatewayState) -> Iterator[Metric]:
    """Per-backend prefix-cache figures (hit rate = cached / prompt) and routing reasons."""
    labels = ["pool", "backend"]
    prompt = CounterMetricFamily(
        "gateway_backend_prompt_tokens", "Prompt tokens of answers from this backend (engine usage).", labels=labels
    )
    cached = CounterMetricFamily(
        "gateway_backend_cached_prompt_tokens",
        "Of those, served from the engine's prefix cache (usage.prompt_tokens_details.cached_tokens).",
        labels=labels,
    )
    queries = CounterMetricFamily(
        "gateway_backend_engine_prefix_cache_queries",
        "The engine's own prefix-cache queries in tokens (vllm:prefix_cache_queries; llama.cpp prompt tokens).",
        labels=labels,
    )
    hits = CounterMetricFamily(
        "gateway_backend_engine_prefix_cache_hits",
        "The engine's own prefix-cache hits in tokens (vllm:prefix_cache_hits; llama.cpp cached prompt tokens).",
        labels=labels,
    )
    predicted = CounterMetricFamily(
        "gateway_backend_predicted_prompt_bytes", "Prompt bytes routed by cache_aware to this backend.", labels=labels
    )
    predicted_hit = CounterMetricFamily(
        "gateway_backend_predicted_cached_bytes",
        "Of those, predicted cached there by the gateway's prefix index.",
        labels=labels,
    )
    routed = CounterMetricFamily(
        "gateway_backend_routed",
        "Requests routed here by cache_aware, by reason: locality (its cached prefix), affinity "
        "(conversation hash), load.",
        labels=[*labels, "reason"],
    )
    skipped = CounterMetricFamily(
        "gateway_backend_locality_skipped_overloaded",
        "Times this backend held a request's prefix but was passed over for being above the load bound.",
        labels=labels,
    )
    for name, pool in state.pools.items():
        for b in pool.backends:
            c, lv = b.cache, [name, b.id]
            prompt.add_metric(lv, float(c.prompt_tokens))
            cached.add_metric(lv, float(c.cached_tokens))
            if c.engine_queries is not None:
                queries.add_metric(lv, c.engine_queries)
                hits.add_metric(lv, c.engine_hits or 0.0)
            predicted.add_metric(lv, float(c.predicted_bytes))
            predicted_hit.add_metric(lv, float(c.predicted_hit_bytes))
            for reason, n in sorted(c.routed.items()):
                routed.add_metric([*lv, reason], float(n))
            skipped.add_metric(lv, float(c.skipped_overloaded))
    yield from (prompt, cached, queries, hits, predicted, predicted_hit, routed, skipped)
