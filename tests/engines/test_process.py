"""EngineProcess: the one transition function, and restarts counted where /metrics reads them."""

from __future__ import annotations

import os
import signal
from pathlib import Path

import pytest

from gateway.engines.process import ALLOWED, InvalidTransition
from gateway.engines.supervisor import Supervisor
from gateway.routing.backend import BackendState

from .util import make_state, run, until

S = BackendState


def test_transition_table_covers_every_state_and_stopped_only_starts_again() -> None:
    assert set(ALLOWED) == set(BackendState)
    # STOPPED leads only to STARTING (an on-demand start); an engine the supervisor stopped
    # is `ended` and refuses activation (tests/engines/test_on_demand.py).
    assert ALLOWED[S.STOPPED] == frozenset({S.STARTING})
    # Every state can be stopped, and only a restart, a failure or an on-demand start leads to STARTING.
    assert all(S.STOPPED in ALLOWED[s] for s in BackendState if s is not S.STOPPED)
    assert {s for s in BackendState if S.STARTING in ALLOWED[s]} == {S.RESTARTING, S.FAILED, S.STOPPED}
    # Sleep is entered only after a drain, and a wake ends READY or in a restart.
    assert {s for s in BackendState if S.SLEEPING in ALLOWED[s]} == {S.DRAINING}
    assert ALLOWED[S.WAKING] == frozenset({S.READY, S.RESTARTING, S.STOPPED})


def test_invalid_transition_is_refused_and_a_kill_is_one_counted_restart(tmp_path: Path) -> None:
    st = make_state(f"""
auth: {{mode: none}}
engines: {{log_dir: {tmp_path}/logs, restart_backoff_initial: 0.2, stop_grace_seconds: 2}}
pools:
  m:
    engine: sim
    model: /models/sim
    args: [--ttft-ms, "1", --itl-ms, "1"]
    health: {{interval: 0.1}}
""")

    async def main() -> None:
        sup = Supervisor(st)
        try:
            await sup.start()
            assert await sup.wait_ready(30)
            [e] = sup.engines
            with pytest.raises(InvalidTransition):
                e.transition(S.STARTING, "not from READY")
            assert e.state is S.READY and e.restarts == e.backend.restarts == 0
            pid = e.pid
            assert pid is not None
            os.kill(pid, signal.SIGKILL)
            await until(lambda: e.state is S.READY and e.restarts == 1, timeout=20, what="restart")
            assert e.backend.restarts == 1 and e.pid != pid
            path = [(h.old, h.new) for h in e.history]
            assert path[-3:] == [(S.READY, S.RESTARTING), (S.RESTARTING, S.STARTING), (S.STARTING, S.READY)]
        finally:
            await sup.stop()

    run(main())
