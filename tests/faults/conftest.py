"""The fault suite (issue #14): real gateway processes, simulated engines and a real
redis-server, broken on purpose. Every test is bounded in time and ends what it starts
by PID."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from gateway.sim.testing import SimProcess

FAST = ["--ttft-ms", "1", "--itl-ms", "1", "--max-num-seqs", "256"]


@pytest.fixture(scope="module")
def fast_sim() -> Iterator[SimProcess]:
    with SimProcess(["--served-model-name", "engine-chat", *FAST]) as sim:
        yield sim
