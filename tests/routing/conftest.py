from __future__ import annotations

from collections.abc import Iterator

import pytest

from gateway.sim.testing import SimProcess
from tests.routing.prefix_sims import SIM_ARGS


@pytest.fixture
def sims() -> Iterator[list[SimProcess]]:
    """Three simulated engines with prefix caching (tests/routing/prefix_sims.py)."""
    procs = [SimProcess(SIM_ARGS) for _ in range(3)]
    try:
        yield procs
    finally:
        for p in procs:
            p.close()
