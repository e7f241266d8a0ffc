"""An engine like a vLLM without the `/collective_rpc` dev route: sleep mode works, but the
weights discarded by a level-2 sleep cannot be reloaded in place. Otherwise the simulator."""

from __future__ import annotations

import sys

from gateway.sim import app as sim_app
from gateway.sim.__main__ import main
from gateway.sim.dev_routes import dev_routes


def _without_reload(st: object) -> object:
    routes = dev_routes(st)  # type: ignore[arg-type]
    routes.pop("/collective_rpc")
    return routes


sim_app.dev_routes = _without_reload  # type: ignore[assignment]
sys.exit(main())
