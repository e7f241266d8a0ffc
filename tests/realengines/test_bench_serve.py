"""`vllm bench serve` (vLLM's own load generator) through the gateway: no failures.

Run from the vLLM environment with the tiny model as tokenizer, once through the gateway
and once straight at the same engine. The figures (req/s, TTFT p50/p99) land in
$GATEWAY_CACHE/logs/bench-serve.json; speed itself is judged in benchmarks/, not here.

The session's vLLM pool has two replicas; a run through it would spread over two engines
while the direct run has one. So the gateway's run goes through a one-endpoint pool on
the very engine the direct run uses, added by a hot reload for this test and removed after.
"""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path
from typing import Any

from .conftest import VLLM_CHAT, require
from .harness import CLIENT_KEY, ENV_FILE, REPO, Gateway, RealEngines

PROMPTS = 24


BENCH_POOL = "vllm-one"


def bench(engines: RealEngines, targets: dict[str, tuple[str, str | None]], out: Path,
          model_of: dict[str, str]) -> dict[str, Any]:
    """One process runs every target: importing vLLM costs more than the runs themselves."""
    env = {k: v for k, v in os.environ.items() if k != "OPENAI_API_KEY"}
    env.update({"HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "VLLM_NO_USAGE_STATS": "1"})
    argv = [engines.vllm_python, str(REPO / "scripts" / "realengines" / "bench_serve.py"), "--out", str(out)]
    for name, (url, key) in targets.items():
        argv += ["--target", f"{name}={url}" + (f"={key}" if key else "")]
    for name, model in model_of.items():
        argv += ["--model-of", f"{name}={model}"]
    argv += [
        "--",
        "--backend", "openai-chat", "--endpoint", "/v1/chat/completions",
        "--model", VLLM_CHAT, "--tokenizer", engines.model_hf,
        "--dataset-name", "random", "--random-input-len", "32", "--random-output-len", "16",
        "--num-prompts", str(PROMPTS), "--max-concurrency", "4", "--ignore-eos", "--seed", "1",
        "--percentile-metrics", "ttft", "--metric-percentiles", "50,99", "--disable-tqdm",
    ]
    proc = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    result: dict[str, Any] = json.loads(out.read_text())
    return result


def test_vllm_bench_serve_through_the_gateway(gateway: Gateway, engines: RealEngines, tmp_path: Path) -> None:
    require(VLLM_CHAT)
    engine = sorted(gateway.engine_urls(VLLM_CHAT).values())[0]
    pools = dict(gateway.pools)
    gateway.write_config({**pools, BENCH_POOL: {"endpoints": [engine + "/v1"], "upstream_model": VLLM_CHAT}})
    try:
        assert gateway.admin("POST", "/reload").status_code == 200
        gateway.wait_ready(60)
        runs = bench(
            engines,
            {"gateway": (gateway.url, CLIENT_KEY), "direct": (engine, None)},
            tmp_path / "bench.json",
            {"gateway": BENCH_POOL},
        )
    finally:
        gateway.write_config(pools)
        gateway.admin("POST", "/reload")
    via, direct = runs["gateway"], runs["direct"]
    assert via["completed"] == PROMPTS and via.get("failed", 0) == 0, via
    assert direct["completed"] == PROMPTS
    # Output lengths come from usage.completion_tokens: the gateway must keep usage intact.
    assert via["total_output_tokens"] == direct["total_output_tokens"] == PROMPTS * 16
    keys = ("request_throughput", "p50_ttft_ms", "p99_ttft_ms", "output_throughput")
    summary = {"gateway": {k: via[k] for k in keys}, "direct": {k: direct[k] for k in keys}}
    (ENV_FILE.parent / "logs").mkdir(parents=True, exist_ok=True)
    (ENV_FILE.parent / "logs" / "bench-serve.json").write_text(json.dumps(summary, indent=2))
    print(json.dumps(summary))
