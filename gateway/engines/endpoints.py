"""Health probes for external endpoints (engines the gateway did not start).

An endpoint starts READY (it was configured, so presume it serves) and moves between
READY and UNHEALTHY by the thresholds of `engines.endpoint_health`. There is no process
to restart: an UNHEALTHY endpoint simply gets no traffic until its probes pass again.
Default probe: GET {endpoint}/models, which every OpenAI-compatible server answers; a
configured `path` is taken from the server root (the URL without its trailing /v1).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from typing import Any

import aiohttp

from ..config import HealthConfig
from ..routing.backend import Backend, BackendState
from ..routing.pool import Pool
from . import health
from .discovery import discover_until_known

log = logging.getLogger("gateway.engines")


def status_row(b: Backend, uptime: float | None) -> dict[str, Any]:
    """An external endpoint's row in `/admin/backends` (same columns as a spawned engine's)."""
    return {
        "pool": b.pool,
        "id": b.id,
        "engine": "external",
        "source": b.source,
        "state": str(b.state),
        "pid": None,
        "port": None,
        "url": b.url,
        "devices": "",
        "outstanding": b.outstanding,
        **b.balancing_view(),
        "restarts": 0,
        "last_error": b.last_error,
        "uptime": uptime,
    }


def probe_target(backend: Backend, cfg: HealthConfig) -> health.ProbeTarget:
    models = backend.url + "/models"
    root = backend.url[: -len("/v1")] if backend.url.endswith("/v1") else backend.url
    url = models if cfg.path is None else root + cfg.path
    # We do not know which engine serves an endpoint: `scrape` recognises every engine's gauges.
    return health.ProbeTarget(
        health_url=url, models_url=models, headers=health.auth_headers(backend.api_key), metrics_url=root + "/metrics"
    )


class EndpointProbe:
    def __init__(
        self,
        backend: Backend,
        pool: Pool,
        cfg: HealthConfig,
        session: Callable[[], aiohttp.ClientSession],
        on_change: Callable[[], None],
    ) -> None:
        self.backend = backend
        self.pool = pool
        self.cfg = cfg
        self._session = session
        self._on_change = on_change
        self.ready_since: float | None = time.monotonic() if backend.state is BackendState.READY else None
        self._tasks: list[asyncio.Task[None]] = []

    def start(self) -> None:
        loop = asyncio.get_running_loop()
        session = self._session()
        self._tasks = [
            loop.create_task(
                health.monitor(
                    session,
                    probe_target(self.backend, self.cfg),
                    self.backend,
                    self.cfg,
                    self._on_verdict,
                    healthy=self.backend.state is BackendState.READY,
                ),
                name=f"probe {self.backend.id}",
            ),
            # The name it serves, for requests sent to it (engines reject names they do not serve).
            loop.create_task(discover_until_known(session, self.backend), name=f"discover {self.backend.id}"),
        ]

    async def stop(self) -> None:
        for t in self._tasks:
            t.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    def _on_verdict(self, ok: bool, detail: str) -> None:
        b = self.backend
        old = b.state
        if ok and old is BackendState.UNHEALTHY:
            b.state = BackendState.READY
            self.ready_since = time.monotonic()
            log.info("%s: unhealthy -> ready (probe passing again)", b.id)
            self.pool.wake()
        elif not ok and old is BackendState.READY:
            b.state = BackendState.UNHEALTHY
            b.last_error = f"health check failing: {detail}"
            self.ready_since = None
            log.warning("%s: ready -> unhealthy (%s)", b.id, detail)
        else:
            return
        self._on_change()
