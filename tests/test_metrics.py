"""Prometheus metrics: the fixed names the dashboard uses, label switches, scrape-time gauges."""

from __future__ import annotations

import asyncio
import os
import signal
import time
from pathlib import Path

import httpx
from prometheus_client.parser import text_string_to_metric_families

from gateway.config import GatewayConfig
from gateway.metering import Meter
from gateway.metrics import Metrics
from gateway.ratelimit import Limiter, RateLimited
from gateway.ratelimit.local_counters import LocalCounters
from gateway.routing.backend import BackendState
from gateway.server.app import create_state
from tests.gw import GatewayServer, wait_until
from tests.metering.ctxs import chunk, ctx, key, usage

FIXED = {
    "gateway_requests_total", "gateway_request_duration_seconds", "gateway_time_to_first_token_seconds",
    "gateway_prompt_tokens_total", "gateway_completion_tokens_total", "gateway_backend_outstanding",
    "gateway_backend_up", "gateway_backend_restarts_total", "gateway_pool_queue_depth",
    "gateway_rate_limited_total", "gateway_overhead_seconds", "gateway_usage_records_dropped_total",
    "gateway_usage_buffer_records", "gateway_ratelimit_degraded_total", "gateway_backend_prompt_tokens_total", "gateway_backend_cached_prompt_tokens_total",
    "gateway_backend_engine_prefix_cache_queries_total", "gateway_backend_engine_prefix_cache_hits_total",
    "gateway_backend_predicted_prompt_bytes_total", "gateway_backend_predicted_cached_bytes_total", "gateway_backend_routed_total",
    "gateway_backend_locality_skipped_overloaded_total",
    "gateway_backend_state", "gateway_swaps_total",
    "gateway_engine_load_seconds", "gateway_engine_wake_seconds", "gateway_request_load_wait_seconds",
    "gateway_audio_seconds_total",
}  # fmt: skip


def cfg(key_label: bool = True) -> GatewayConfig:
    return GatewayConfig.model_validate({
        "store": "memory://", "auth": {"mode": "none"}, "metrics": {"key_label": key_label},
        "pools": {"chat": {"endpoints": ["http://127.0.0.1:9/v1", "http://127.0.0.1:10/v1"]},
                  "embed": {"kind": "embedding", "endpoints": ["http://127.0.0.1:11/v1"]}},
    })  # fmt: skip


def samples(metrics: Metrics) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    body, ctype = metrics.render()
    assert ctype.startswith("text/plain")
    out = {}
    for fam in text_string_to_metric_families(body.decode()):
        for s in fam.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def test_fixed_names_and_request_series() -> None:
    state = create_state(cfg())
    m = Metrics(state)
    c = ctx(usage=usage(10, 20), stream=True)
    c.first_byte_at = c.started + 0.05
    c.upstream_time = 0.2
    m.observe_request(c)
    m.observe_request(ctx(status=401, key_name=None, pool_name=None, dispatched=False))
    s = samples(m)
    declared = {line.split()[2] for line in m.render()[0].decode().splitlines() if line.startswith("# TYPE ")}
    assert declared == FIXED
    # One-hot state per backend: exactly one state is 1 (endpoints start READY).
    b = "chat@http://127.0.0.1:9/v1"
    one_hot = {k[1][2][1]: v for k, v in s.items() if k[0] == "gateway_backend_state" and k[1][0][1] == b}
    assert one_hot["ready"] == 1 and sum(one_hot.values()) == 1 and "sleeping" in one_hot and "waking" in one_hot
    assert s[("gateway_swaps_total", (("pool", "chat"),))] == 0
    assert s[("gateway_requests_total", (("endpoint", "chat"), ("key", "alice"), ("pool", "chat"), ("status", "200")))] == 1
    assert s[("gateway_requests_total", (("endpoint", "chat"), ("key", "_none"), ("pool", "_none"), ("status", "401")))] == 1
    assert s[("gateway_prompt_tokens_total", (("key", "alice"), ("pool", "chat")))] == 10
    assert s[("gateway_completion_tokens_total", (("key", "alice"), ("pool", "chat")))] == 20
    assert s[("gateway_time_to_first_token_seconds_count", (("pool", "chat"),))] == 1
    assert abs(s[("gateway_overhead_seconds_sum", (("pool", "chat"),))] - 0.05) < 1e-9  # 0.25 total - 0.2 upstream
    assert s[("gateway_request_duration_seconds_count", (("endpoint", "chat"), ("pool", "chat")))] == 1


def test_backend_and_pool_gauges_are_read_at_scrape_time() -> None:
    state = create_state(cfg())
    m = Metrics(state)
    b0, b1 = state.pools["chat"].backends
    b0.outstanding, b1.state = 3, BackendState.UNHEALTHY
    s = samples(m)
    lb = lambda b: (("backend", b.id), ("pool", "chat"))  # noqa: E731
    assert s[("gateway_backend_outstanding", lb(b0))] == 3
    assert (s[("gateway_backend_up", lb(b0))], s[("gateway_backend_up", lb(b1))]) == (1, 0)
    assert s[("gateway_backend_restarts_total", lb(b1))] == 0  # a real restart: test_killed_engine_...
    assert s[("gateway_pool_queue_depth", (("pool", "embed"),))] == 0
    b0.outstanding = 0
    assert samples(m)[("gateway_backend_outstanding", lb(b0))] == 0


def test_key_label_switch_hides_key_names() -> None:
    state = create_state(cfg(key_label=False))
    m = Metrics(state)
    m.observe_request(ctx(usage=usage(1, 1), key_name="alice"))
    m.observe_request(ctx(usage=usage(1, 1), key_name="bob"))
    m.rate_limited("alice", "rpm")
    s = samples(m)
    keys = {dict(lbl).get("key") for (_, lbl) in s if "key" in dict(lbl)}
    assert keys == {"_"}
    assert s[("gateway_prompt_tokens_total", (("key", "_"), ("pool", "chat")))] == 2
    assert s[("gateway_rate_limited_total", (("key", "_"), ("reason", "rpm")))] == 1


def test_rate_limited_requests_and_meter_state_are_counted() -> None:
    async def main() -> None:
        state = create_state(cfg())
        m = Metrics(state)
        state.meter = await Meter.start(state.config)
        lim = await Limiter.start(state.config, state.meter)
        k = key("limited", rpm=1)
        await lim.admit(k, ctx(key_name="limited"))
        refused = ctx(key_name="limited")
        try:
            await lim.admit(k, refused)
        except RateLimited:
            pass
        m.observe_request(refused)
        # A cut-short stream: its tokens reach the counters once the meter has estimated them.
        cut = ctx(stream=True, key_name="bob", delivered=[chunk([{"index": 0, "delta": {"content": " the model"}}])])
        state.meter.record(cut)
        m.observe_request(cut)
        s = samples(m)
        assert s[("gateway_rate_limited_total", (("key", "limited"), ("reason", "rpm")))] == 1
        assert s[("gateway_usage_buffer_records", ())] == 1
        await state.meter.flush()
        s = samples(m)
        assert s[("gateway_completion_tokens_total", (("key", "bob"), ("pool", "chat")))] == 2
        assert s[("gateway_usage_buffer_records", ())] == 0
        assert s[("gateway_usage_records_dropped_total", ())] == 0
        await lim.close()
        await state.meter.close()

    asyncio.run(main())


def test_registries_are_per_app_and_observing_is_cheap() -> None:
    a, b = Metrics(create_state(cfg())), Metrics(create_state(cfg()))
    a.observe_request(ctx(usage=usage(1, 1)))
    assert a.registry is not b.registry
    assert ("gateway_requests_total", (("endpoint", "chat"), ("key", "alice"), ("pool", "chat"), ("status", "200"))) not in samples(b)
    c = ctx(usage=usage(5, 5), stream=True)
    c.first_byte_at = c.started + 0.01
    t0 = time.perf_counter()
    for _ in range(5000):
        a.observe_request(c)
    assert (time.perf_counter() - t0) / 5000 < 100e-6


def _spawn_cfg(tmp: str, pools: str) -> str:
    return f"""
auth: {{mode: none}}
store: "memory://"
engines:
  port_range: [21000, 21999]
  log_dir: {tmp}/logs
  restart_backoff_initial: 0.2
pools:
{pools}
"""


SIM_POOL = """  m:
    engine: sim
    model: /models/sim
    args: [--ttft-ms, "1", --itl-ms, "1"]
    startup_timeout: 30
"""


def _restarts(gw: GatewayServer) -> dict[str, float]:
    text = httpx.get(gw.url + "/metrics").text
    return {
        s.labels["backend"]: s.value
        for fam in text_string_to_metric_families(text)
        for s in fam.samples
        if s.name == "gateway_backend_restarts_total"
    }


# Regression (issue #11): the supervisor counted restarts where /metrics never looked.
def test_killed_engine_shows_a_restart_in_metrics(tmp_path: Path) -> None:
    with GatewayServer(_spawn_cfg(str(tmp_path), SIM_POOL)) as gw:
        assert gw.call(lambda: gw.state.supervisor.wait_ready(30))
        [row] = [r for r in gw.state.supervisor.status() if r["source"] == "spawned"]
        assert _restarts(gw) == {row["id"]: 0.0}
        os.kill(row["pid"], signal.SIGKILL)

        def restarted() -> bool:
            [r] = [r for r in gw.state.supervisor.status() if r["source"] == "spawned"]
            return r["state"] == "ready" and r["restarts"] == 1

        assert wait_until(restarted, 20)
        assert _restarts(gw) == {row["id"]: 1.0}


def test_degraded_rate_limit_decisions_are_exported_by_reason() -> None:
    state = create_state(cfg())
    m = Metrics(state)
    assert not any(name == "gateway_ratelimit_degraded_total" for name, _ in samples(m))
    lim = Limiter(LocalCounters())
    lim.degraded.update({"timeout": 2, "backoff": 40})
    state.limiter = lim
    s = samples(m)
    assert s[("gateway_ratelimit_degraded_total", (("reason", "backoff"),))] == 40
    assert s[("gateway_ratelimit_degraded_total", (("reason", "timeout"),))] == 2
