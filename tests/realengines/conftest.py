"""Fixtures of the real-engine tier: the installed engines, one gateway spawning them all.

Every test here carries the `realengine` marker (`pytest -m "not realengine"` is the fast
tier). Engine processes are shared by the whole session: vLLM takes over a minute to
start, so the gateway below spawns each engine once and the tests take turns on it.

For quick loops on one engine: `REALENGINES_ONLY=vllm` (or `llamacpp`) spawns only that
engine's pools and skips the other's tests.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest
from openai import OpenAI

from .harness import CLIENT_KEY, Gateway, RealEngines, ensure_installed, llamacpp_pool, vllm_pool

# Names the tests use: one chat and one embedding pool per engine.
VLLM_CHAT, VLLM_EMBED, LLAMA_CHAT, LLAMA_EMBED = "vllm-chat", "vllm-embed", "llama-chat", "llama-embed"
CHAT_POOLS = (VLLM_CHAT, LLAMA_CHAT)
EMBED_POOLS = (VLLM_EMBED, LLAMA_EMBED)
ALIAS = {VLLM_CHAT: "tiny-vllm", LLAMA_CHAT: "tiny-llama"}
LLAMA_REPLICAS = 2
# Two vLLMs of one pool (~2.9 GiB each), started in parallel with the rest of the session.
VLLM_REPLICAS = 2
# A cross-encoder for /rerank and /score: the tiny model with a one-label classifier head
# (vLLM serves those routes only for ONE label; `--convert classify` alone keeps two).
VLLM_RERANK = "vllm-rerank"
ENGINE_OF = {VLLM_CHAT: "vllm", VLLM_EMBED: "vllm", VLLM_RERANK: "vllm", LLAMA_CHAT: "llamacpp",
             LLAMA_EMBED: "llamacpp"}


def enabled(pool: str) -> bool:
    only = os.environ.get("REALENGINES_ONLY")
    return not only or ENGINE_OF[pool] == only


def require(*pools: str) -> None:
    for pool in pools:
        if not enabled(pool):
            pytest.skip(f"REALENGINES_ONLY={os.environ.get('REALENGINES_ONLY')}: {pool} is not spawned")


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Iterator[None]:
    """A failed test's report carries the gateway's last log lines: CI keeps only what
    pytest prints, and the gateway's log dies with the run's temporary directory."""
    outcome = yield
    report: pytest.TestReport = outcome.get_result()
    gw = getattr(item, "funcargs", {}).get("gateway")
    if report.failed and isinstance(gw, Gateway):
        report.sections.append(("gateway log (last 40 lines)", gw.tail(40)))


@pytest.fixture(autouse=True)
def _only_enabled_pools(request: pytest.FixtureRequest) -> None:
    callspec = getattr(request.node, "callspec", None)
    pool = callspec.params.get("pool") if callspec is not None else None
    if pool is not None:
        require(pool)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    here = Path(__file__).parent
    for item in items:
        if here in Path(str(item.fspath)).parents:
            item.add_marker(pytest.mark.realengine)


@pytest.fixture(scope="session")
def engines() -> RealEngines:
    return ensure_installed()


def pools(engines: RealEngines) -> dict[str, object]:
    every: dict[str, object] = {
        VLLM_CHAT: vllm_pool(
            engines,
            ["--reasoning-parser", "deepseek_r1", "--enable-auto-tool-choice", "--tool-call-parser", "hermes"],
            aliases=[ALIAS[VLLM_CHAT]],
            reasoning="passthrough",
            replicas=VLLM_REPLICAS,
        ),
        VLLM_EMBED: vllm_pool(
            engines,
            ["--runner", "pooling", "--convert", "embed", "--pooler-config", '{"seq_pooling_type": "MEAN"}'],
            kind="embedding",
        ),
        # The launcher adds `--runner pooling --convert classify` for `kind: rerank`. The one
        # label's weights come from lm_head's row for "a" (vLLM's "no_post_processing"
        # loader): with `num_labels: 1` alone the head is left uninitialised and a run
        # answered 400 "Out of range float values are not JSON compliant" (NaN scores).
        VLLM_RERANK: vllm_pool(
            engines,
            ["--hf-overrides", '{"method": "no_post_processing", "classifier_from_token": ["a"]}'],
            kind="rerank",
        ),
        LLAMA_CHAT: llamacpp_pool(
            engines,
            ["--jinja", "--reasoning-format", "deepseek", "-np", "2"],
            aliases=[ALIAS[LLAMA_CHAT]],
            reasoning="passthrough",
            replicas=LLAMA_REPLICAS,
            # The GGUF has no tokenizer.json beside it; estimates use the HF directory's.
            tokenizer=engines.model_hf + "/tokenizer.json",
        ),
        LLAMA_EMBED: llamacpp_pool(engines, ["--embeddings", "--pooling", "mean"], kind="embedding"),
    }
    return {name: spec for name, spec in every.items() if enabled(name)}


@pytest.fixture(scope="session")
def gateway(engines: RealEngines, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gateway]:
    gw = Gateway(tmp_path_factory.mktemp("realgw"), pools(engines))
    try:
        gw.start()
        yield gw
    finally:
        gw.stop()


@pytest.fixture(scope="session")
def client(gateway: Gateway) -> OpenAI:
    # No retries: a failure must show as the failure it is.
    return OpenAI(base_url=gateway.base_url, api_key=CLIENT_KEY, max_retries=0, timeout=120)
