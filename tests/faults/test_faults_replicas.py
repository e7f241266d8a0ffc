"""Two gateway processes on one Redis: a burst all at once must meet the key's limit
exactly (issue #14, finding 1: both replicas timed out on Redis under a 150-request burst
and admitted everything), and the shared ledger must count every request exactly once."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import httpx

from gateway.sim.testing import SimProcess
from tests.gw import ADMIN_KEY, sha
from tests.metering.procs import GatewayProcess
from tests.redis_server import RedisServer

ADMIN = {"authorization": f"Bearer {ADMIN_KEY}"}
BODY = {"model": "chat", "messages": [{"role": "user", "content": "x"}], "max_tokens": 3}


def _config(redis_url: str, sim: SimProcess) -> str:
    return f"""
auth:
  admin_key_sha256: {sha(ADMIN_KEY)}
  keys:
    - {{name: limited, key_sha256: {sha("sk-limited")}, rpm: 60}}
    - {{name: free, key_sha256: {sha("sk-free")}}}
store: "{redis_url}"
metering: {{flush_interval: 0.05}}
pools:
  chat: {{endpoints: [{sim.base_url}]}}
"""


async def _burst(urls: list[str], key: str, n: int) -> list[httpx.Response]:
    """`n` requests at once, alternating between the gateways, each on its own connection."""
    limits = httpx.Limits(max_connections=n, max_keepalive_connections=0)
    async with httpx.AsyncClient(timeout=30, limits=limits, headers={"authorization": f"Bearer {key}"}) as c:
        return await asyncio.gather(
            *(c.post(urls[i % len(urls)] + "/v1/chat/completions", json=BODY) for i in range(n))
        )


def _degraded(url: str) -> float:
    text = httpx.get(url + "/metrics", timeout=10).text
    return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
               if line.startswith("gateway_ratelimit_degraded_total"))  # fmt: skip


def test_two_gateways_burst_of_150_admits_exactly_60_and_the_ledger_is_exact(
    fast_sim: SimProcess, tmp_path: Path
) -> None:
    with RedisServer() as rs:
        cfg = _config(rs.url, fast_sim)
        with GatewayProcess(cfg, tmp_path / "a", "a") as a, GatewayProcess(cfg, tmp_path / "b", "b") as b:
            urls = [a.url, b.url]
            # Ten through each replica first, so both surely hold admissions (in one
            # burst either may get to Redis first for all 60), then 130 alternating.
            rs_ = [*asyncio.run(_burst([a.url], "sk-limited", 10)), *asyncio.run(_burst([b.url], "sk-limited", 10)),
                   *asyncio.run(_burst(urls, "sk-limited", 130))]
            codes = [r.status_code for r in rs_]
            assert codes[:20] == [200] * 20, codes[:20]
            assert (codes.count(200), codes.count(429)) == (60, 90), (codes, a.log_tail(), b.log_tail())
            refused = next(r for r in rs_ if r.status_code == 429)
            assert refused.json()["error"]["code"] == "rate_limit_exceeded"
            assert int(refused.headers["retry-after"]) >= 50  # nothing leaves the window for a minute
            assert _degraded(a.url) == _degraded(b.url) == 0  # decided by Redis, not by each replica

            free = asyncio.run(_burst(urls, "sk-free", 100))
            assert [r.status_code for r in free] == [200] * 100
            # Both replicas write one ledger: every answered request once, with the engine's counts.
            engine_gen = fast_sim.metrics()["vllm:generation_tokens_total"]
            deadline = asyncio.run(_wait_ledger(a.url, 160 + 90))
            assert deadline, "ledger incomplete"
            rows: list[dict[str, Any]] = httpx.get(
                a.url + "/admin/usage", params={"group_by": "key", "since": "0"}, headers=ADMIN
            ).json()["data"]
            by_key = {r["key"]: r for r in rows}
            assert by_key["limited"]["requests"] == 150  # 60 served + 90 refused, each recorded once
            assert by_key["free"]["requests"] == 100
            assert sum(r["completion_tokens"] for r in rows) == engine_gen


async def _wait_ledger(url: str, want: int, within: float = 20.0) -> bool:
    async with httpx.AsyncClient(timeout=10, headers=ADMIN) as c:
        for _ in range(int(within / 0.05)):
            r = await c.get(url + "/admin/usage", params={"group_by": "key", "since": "0"})
            if sum(row["requests"] for row in r.json()["data"]) >= want:
                return True
            await asyncio.sleep(0.05)
    return False
