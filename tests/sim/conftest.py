"""Shared simulator processes for the sim tests (module/session scoped where state allows)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from openai import OpenAI

from gateway.sim.testing import SimProcess

# Fast but non-zero timing keeps streams realistic (separate writes) without slowing tests.
CHAT_ARGS = ["--served-model-name", "sim-model", "alias-b", "--model", "/models/sim-7b",
             "--ttft-ms", "2", "--itl-ms", "1", "--max-model-len", "512", "--seed", "7"]


@pytest.fixture(scope="session")
def chat_sim() -> Iterator[SimProcess]:
    """A plain chat sim shared by tests that only read per-request results (not absolute metrics)."""
    with SimProcess(CHAT_ARGS) as sim:
        yield sim


@pytest.fixture(scope="session")
def client(chat_sim: SimProcess) -> Iterator[OpenAI]:
    with OpenAI(base_url=chat_sim.base_url, api_key="x", max_retries=0) as c:
        yield c
