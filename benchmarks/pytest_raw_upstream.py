"""pytest plugin: run the gateway's own tests with the raw upstream client (benchmarks/upstreams.py).

    .venv/bin/python -m pytest -p benchmarks.pytest_raw_upstream tests/test_gateway_e2e.py

Evidence for the proposal to replace aiohttp on the hot path: the prototype must pass the
same end-to-end tests (streaming, disconnects freeing engine slots, retries, timeouts).
"""

from __future__ import annotations

import gateway.app as _app

from .upstreams import RawSession

_app.make_session = RawSession  # type: ignore[attr-defined,assignment]
