"""Health: readiness polling at start-up, runtime probes with thresholds, queue metrics.

All probing uses the supervisor's own aiohttp session (small, separate from the proxy's
pool) so probes never queue behind proxied traffic and a busy pool cannot starve them.

What blocks:
- `wait_ready` returns once the engine answers its health path with 200 AND its
  `/v1/models` lists the served name; it raises `NotReady` at the deadline, or at once if
  the engine answers with a different model list or refuses the gateway's key with
  401/403 (`KeyRejected`): misconfigurations, not a slow load.
- `monitor` never returns; it calls `on_verdict(ok, detail)` each time the failure or
  success threshold is crossed, and scrapes queue gauges after each good probe.
"""

from __future__ import annotations

import asyncio
import re
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import aiohttp

from ..config import HealthConfig
from ..routing.backend import Backend

# Start-up polls start fast (a sim is up in 0.3 s) and slow down for engines loading for minutes.
READY_POLL_FIRST = 0.1
READY_POLL_MAX = 2.0
# A start that requests wait for (on demand): every poll interval is latency added to each of
# them, while a /health probe on loopback costs the engine next to nothing: poll this often.
READY_POLL_WAITED = 0.025


class NotReady(Exception):
    pass


class KeyRejected(NotReady):
    """The engine is up but refuses the gateway's key: a configuration error that a
    restart (minutes of model loading for vLLM) cannot fix."""

    def __init__(self, path: str, status: int, body: bytes) -> None:
        self.status = status
        self.body = body
        said = body.decode("utf-8", "replace").strip()[:200]
        super().__init__(
            f"the engine rejected the gateway's key: {path} answered HTTP {status}"
            + (f" {said}" if said else "")
            + " (the pool's api_key differs from the engine's own --api-key); not retrying"
        )


@dataclass(frozen=True)
class ProbeTarget:
    health_url: str
    models_url: str
    headers: dict[str, str] = field(default_factory=dict)
    metrics_url: str | None = None
    metric_running: str | None = None
    metric_waiting: str | None = None


def auth_headers(api_key: str | None) -> dict[str, str]:
    return {"Authorization": f"Bearer {api_key}"} if api_key else {}


async def get(
    session: aiohttp.ClientSession, url: str, headers: dict[str, str], seconds: float
) -> tuple[int | None, bytes, str]:
    """(status, body, problem). status None when the request itself failed."""
    try:
        async with session.get(url, headers=headers, timeout=aiohttp.ClientTimeout(total=seconds)) as r:
            body = await r.read()
            return r.status, body, "" if r.status == 200 else f"HTTP {r.status}"
    except TimeoutError:
        return None, b"", f"no answer within {seconds:g}s"
    except aiohttp.ClientError as e:
        return None, b"", type(e).__name__ + (f": {e}" if str(e) else "")


def model_ids(body: bytes) -> list[str] | None:
    import orjson

    try:
        data = orjson.loads(body)
        return [str(m["id"]) for m in data["data"]]
    except (orjson.JSONDecodeError, KeyError, TypeError):
        return None


async def wait_ready(
    session: aiohttp.ClientSession, target: ProbeTarget, served: str, within: float, waited: bool = False
) -> bytes:
    """Returns the engine's `/v1/models` body. `waited`: requests are queued for this start
    (on demand): poll every READY_POLL_WAITED."""
    deadline = time.monotonic() + within
    delay = READY_POLL_WAITED if waited else READY_POLL_FIRST
    last = "no answer yet"
    while True:
        per_try = max(0.5, min(5.0, deadline - time.monotonic()))
        status, body, problem = await get(session, target.health_url, target.headers, per_try)
        if status in AUTH_REFUSED:  # vLLM and llama.cpp leave it open; a proxy in front may not
            raise KeyRejected(target.health_url.rsplit("/", 1)[-1] or "health", status, body)
        if status == 200:
            status, body, problem = await get(session, target.models_url, target.headers, per_try)
            if status in AUTH_REFUSED:
                raise KeyRejected("/v1/models", status, body)
            ids = model_ids(body) if status == 200 else None
            if ids is not None:
                if served in ids:
                    return body
                raise NotReady(
                    f"the engine is up but /v1/models lists {ids}, not {served!r} (check --served-model-name)"
                )
            last = f"/v1/models: {problem or 'not a model list'}"
        else:
            last = f"{target.health_url.rsplit('/', 1)[-1] or 'health'}: {problem}"
        if time.monotonic() + delay >= deadline:
            raise NotReady(f"not ready after {within:g}s (last check: {last})")
        await asyncio.sleep(delay)
        if not waited:
            delay = min(delay * 1.5, READY_POLL_MAX)


AUTH_REFUSED = frozenset({401, 403})


class ProbeCounter:
    """Consecutive-result thresholds: one slow probe under load must not eject a backend."""

    def __init__(self, failure_threshold: int, success_threshold: int, healthy: bool = True) -> None:
        self.failure_threshold = failure_threshold
        self.success_threshold = success_threshold
        self.healthy = healthy
        self._streak = 0  # consecutive results that disagree with `healthy`

    def record(self, ok: bool) -> bool | None:
        """The new verdict when a threshold is crossed, else None."""
        if ok == self.healthy:
            self._streak = 0
            return None
        self._streak += 1
        needed = self.success_threshold if ok else self.failure_threshold
        if self._streak >= needed:
            self.healthy = ok
            self._streak = 0
            return ok
        return None


def parse_gauges(text: str, names: set[str]) -> dict[str, float]:
    """Sum each named series over its label sets from Prometheus text exposition."""
    out: dict[str, float] = {}
    for line in text.splitlines():
        if not line or line.startswith("#"):
            continue
        head, _, rest = line.partition(" ")
        name = head.split("{", 1)[0]
        if name not in names:
            continue
        if "{" in head and "}" not in head:  # label values with spaces: value is the last field
            rest = line.rsplit("}", 1)[-1]
        try:
            value = float(rest.split()[0])
        except (IndexError, ValueError):
            continue
        out[name] = out.get(name, 0.0) + value
    return out


# (running, waiting) gauges of every engine we know, for endpoints we did not launch.
KNOWN_QUEUE_METRICS = (
    ("vllm:num_requests_running", "vllm:num_requests_waiting"),
    ("sglang:num_running_reqs", "sglang:num_queue_reqs"),
    ("lmdeploy:num_requests_running", "lmdeploy:num_requests_waiting"),
    ("llamacpp:requests_processing", "llamacpp:requests_deferred"),
)
_KNOWN_NAMES = {n for pair in KNOWN_QUEUE_METRICS for n in pair}


# Prefix-cache counters (tokens): (queries, hits). llama.cpp counts processed and cached
# prompt tokens separately, so its queries are their sum (see `_prefix_counters`).
PREFIX_CACHE_METRICS = (
    ("vllm:prefix_cache_queries_total", "vllm:prefix_cache_hits_total"),
    ("llamacpp:prompt_tokens_total", "llamacpp:prompt_tokens_cached_total"),
)
_CACHE_NAMES = {n for pair in PREFIX_CACHE_METRICS for n in pair}


def kv_capacity_tokens(text: str) -> int | None:
    """vLLM's `vllm:cache_config_info{num_gpu_blocks="N",block_size="B",...} 1`: N x B."""
    i = text.find("\nvllm:cache_config_info{")
    if i < 0:
        return None
    line = text[i + 1 : text.find("\n", i + 1)]
    labels = dict(re.findall(r'(\w+)="([^"]*)"', line))
    try:
        return int(labels["num_gpu_blocks"]) * int(labels["block_size"])
    except (KeyError, ValueError):
        return None


def _prefix_counters(backend: Backend, gauges: dict[str, float]) -> None:
    c = backend.cache
    if "vllm:prefix_cache_queries_total" in gauges:
        c.engine_queries = gauges["vllm:prefix_cache_queries_total"]
        c.engine_hits = gauges.get("vllm:prefix_cache_hits_total", 0.0)
    elif "llamacpp:prompt_tokens_cached_total" in gauges:
        c.engine_hits = gauges["llamacpp:prompt_tokens_cached_total"]
        c.engine_queries = gauges.get("llamacpp:prompt_tokens_total", 0.0) + c.engine_hits


async def scrape(
    session: aiohttp.ClientSession, target: ProbeTarget, backend: Backend, seconds: float
) -> None:
    """Copy the engine's own running/waiting counts into the backend, for the balancers,
    and its prefix-cache counters and KV capacity where it exposes them."""
    if not target.metrics_url:
        return
    status, body, _ = await get(session, target.metrics_url, target.headers, seconds)
    if status != 200:
        return
    if target.metric_running or target.metric_waiting:
        pairs: tuple[tuple[str | None, str | None], ...] = ((target.metric_running, target.metric_waiting),)
        names = {n for n in pairs[0] if n}
    else:
        pairs, names = KNOWN_QUEUE_METRICS, _KNOWN_NAMES
    text = body.decode("utf-8", errors="replace")
    gauges = parse_gauges(text, names | _CACHE_NAMES)
    _prefix_counters(backend, gauges)
    if backend.kv_capacity_tokens is None:
        backend.kv_capacity_tokens = kv_capacity_tokens(text)
    for running, waiting in pairs:
        if running in gauges or waiting in gauges:
            backend.engine_running = gauges.get(running or "", 0.0)
            backend.engine_waiting = gauges.get(waiting or "", 0.0)
            return


async def monitor(
    session: aiohttp.ClientSession,
    target: ProbeTarget,
    backend: Backend,
    cfg: HealthConfig,
    on_verdict: Callable[[bool, str], None],
    healthy: bool = True,
) -> None:
    counter = ProbeCounter(cfg.failure_threshold, cfg.success_threshold, healthy)
    loop = asyncio.get_running_loop()
    # Queue gauges go stale in seconds under load, health verdicts do not: read the
    # gauges every metrics_interval and probe health every interval.
    scrape_every = cfg.metrics_interval if cfg.metrics_interval and target.metrics_url else None
    step = min(cfg.interval, scrape_every) if scrape_every else cfg.interval
    next_probe = loop.time() + cfg.interval
    ok = healthy
    while True:
        await asyncio.sleep(step)
        if loop.time() >= next_probe - step / 10:
            next_probe = loop.time() + cfg.interval
            status, _, problem = await get(session, target.health_url, target.headers, cfg.timeout)
            ok = status == 200
            verdict = counter.record(ok)
            if verdict is not None:
                on_verdict(verdict, problem)
        if ok and scrape_every:
            # A loaded engine may answer /metrics late; a late reading beats none (a timeout
            # would leave the last, stale gauges in place exactly when load is high).
            await scrape(session, target, backend, cfg.timeout)
