"""Redis stopped and restarted, and paused, under a gateway (issue #14): requests keep being
served, rate limits hold (this replica's share while Redis is away, exact again after),
every such decision is counted, and the ledger loses nothing once Redis is back.

tests/metering/test_e2e_metering.py covers the ledger alone with Redis stopped."""

from __future__ import annotations

import os
import signal
import time
from typing import Any

import httpx

from gateway.sim.testing import SimProcess
from tests.gw import ADMIN_KEY, GatewayServer, sha, wait_until
from tests.redis_server import RedisServer

LIMITED = {"authorization": "Bearer sk-limited"}
BODY = {"model": "chat", "messages": [{"role": "user", "content": "x"}], "max_tokens": 2}


def _cfg(rs: RedisServer, sim: SimProcess) -> str:
    return f"""
auth:
  admin_key_sha256: {sha(ADMIN_KEY)}
  keys:
    - {{name: limited, key_sha256: {sha("sk-limited")}, rpm: 30}}
store: "{rs.url}"
metering: {{flush_interval: 0.05}}
pools:
  chat: {{endpoints: [{sim.base_url}]}}
"""


def _codes(c: httpx.Client, n: int) -> list[int]:
    return [c.post("/v1/chat/completions", json=BODY).status_code for _ in range(n)]


def _degraded(c: httpx.Client) -> dict[str, float]:
    out = {}
    for line in c.get("/metrics").text.splitlines():
        if line.startswith("gateway_ratelimit_degraded_total{"):
            labels, value = line.rsplit(" ", 1)
            out[labels.split('"')[1]] = float(value)
    return out


def _ledger(gw: GatewayServer) -> list[dict[str, Any]]:
    r = httpx.get(gw.url + "/admin/usage", params={"group_by": "key", "since": "0"},
                  headers={"authorization": f"Bearer {ADMIN_KEY}"})  # fmt: skip
    assert r.status_code == 200, r.text
    return list(r.json()["data"])


def test_redis_stopped_and_restarted_limits_hold_and_the_ledger_catches_up() -> None:
    with SimProcess(["--served-model-name", "engine-chat", "--ttft-ms", "1", "--itl-ms", "1"]) as sim, \
            RedisServer(persistent=True) as rs, GatewayServer(_cfg(rs, sim)) as gw, \
            httpx.Client(base_url=gw.url, headers=LIMITED, timeout=10) as c:  # fmt: skip
        assert _codes(c, 10) == [200] * 10
        assert wait_until(lambda: gw.state.meter.buffered == 0)
        rs.stop()
        t0 = time.monotonic()
        codes = _codes(c, 40)
        assert time.monotonic() - t0 < 10  # a dead Redis is noticed at once, not waited on
        # One replica: its share is the whole limit; its own 10 admissions still count.
        assert (codes.count(200), codes.count(429)) == (20, 20), codes
        assert sum(_degraded(c).values()) == 40
        rs.start()
        assert wait_until(lambda: gw.state.meter.buffered == 0, timeout=20)
        assert sum(r["requests"] for r in _ledger(gw)) == 50
        # Back on Redis: the 20 local admissions were logged there, so the window is full.
        assert wait_until(lambda: not gw.state.limiter.counters.unsynced, timeout=10)
        time.sleep(1.1)  # the backoff after the last failure  # noqa: ASYNC251
        assert _codes(c, 5) == [429] * 5
        assert sum(_degraded(c).values()) == 40  # decided by Redis again


def test_redis_paused_requests_wait_at_most_the_timeout_then_degrade() -> None:
    with SimProcess(["--served-model-name", "engine-chat", "--ttft-ms", "1", "--itl-ms", "1"]) as sim, \
            RedisServer() as rs, GatewayServer(_cfg(rs, sim)) as gw, \
            httpx.Client(base_url=gw.url, headers=LIMITED, timeout=10) as c:  # fmt: skip
        assert _codes(c, 5) == [200] * 5
        assert rs.proc is not None
        os.kill(rs.proc.pid, signal.SIGSTOP)
        try:
            t0 = time.monotonic()
            codes = _codes(c, 40)
            took = time.monotonic() - t0
        finally:
            os.kill(rs.proc.pid, signal.SIGCONT)
        assert (codes.count(200), codes.count(429)) == (25, 15), codes
        assert took < 8, took  # the first waits up to the 2 s timeout, the rest are decided at once
        d = _degraded(c)
        # Whoever meets the paused Redis first marks it down: the first request (one
        # `timeout`, the rest `backoff`) or the 2 s heartbeat (all `backoff`); either way no
        # more than one request waits out the timeout, and every decision is counted.
        assert set(d) <= {"timeout", "backoff"} and d.get("timeout", 0) <= 1 and sum(d.values()) == 40, d
