"""The supervisor with real engine processes (the simulator and a tiny stdlib server)."""

from __future__ import annotations

import asyncio
import os
import signal
import sys
import time
from pathlib import Path

import aiohttp
import httpx

from gateway.engines.supervisor import Supervisor
from gateway.routing.backend import BackendState
from gateway.server.admin import build_admin_app

from .util import FAKE_ENGINE, environ_of, make_state, pid_gone, run, until

S = BackendState


def sim_config(tmp_path: Path, pool: str, engines: str = "", auth: str = "auth: {mode: none}") -> str:
    return f"""
{auth}
engines:
  log_dir: {tmp_path}/logs
  restart_backoff_initial: 0.2
  stop_grace_seconds: 2
  {engines}
pools:
{pool}
"""


def test_engine_gets_no_traffic_until_ready_then_queued_requests_proceed(tmp_path: Path) -> None:
    st = make_state(
        sim_config(
            tmp_path,
            """  chat:
    engine: sim
    model: /models/sim
    args: [--startup-seconds, "2", --ttft-ms, "1", --itl-ms, "20"]
    health: {interval: 0.1}
    queue: {timeout: 20}""",
        )
    )

    async def main() -> None:
        sup = Supervisor(st)
        try:
            await sup.start()
            pool = st.pools["chat"]
            [b] = pool.backends
            assert (b.source, b.state, b.routable) == ("spawned", S.STARTING, False)
            waiting = asyncio.create_task(pool.acquire())
            # The engine process is up and answering (503 on /health) but still loading.
            await until(
                lambda: any("listening" in line for line in sup.logs(b.id) or []), what="sim listening"
            )
            # Not a wait for the server: a window in which several readiness polls get 503.
            await asyncio.sleep(0.3)
            assert not waiting.done() and b.state is S.STARTING and pool.queued == 1
            got = await asyncio.wait_for(waiting, 10)
            assert got is b and b.state is S.READY
            [engine] = sup.engines
            assert time.monotonic() - (engine.started_at or 0) >= 2.0
            assert [(h.old, h.new) for h in engine.history] == [(S.STARTING, S.READY)]

            # The engine's own queue is scraped from /metrics into the backend.
            async with aiohttp.ClientSession() as http:
                body = {"model": "chat", "prompt": "hi", "max_tokens": 50, "stream": True}
                async with http.post(b.url + "/completions", json=body) as r:
                    await until(lambda: b.engine_running == 1, what="engine_running scraped")
                    await r.read()
            await until(lambda: b.engine_running == 0, what="engine_running back to 0")
            pool.release(got)
        finally:
            await sup.stop()
        assert b.state is S.STOPPED and pool.backends == []

    run(main())


def test_killed_engine_leaves_routing_restarts_and_comes_back(tmp_path: Path) -> None:
    st = make_state(sim_config(tmp_path, "  chat: {engine: sim, model: m, args: [--ttft-ms, '1']}"))

    async def main() -> None:
        sup = Supervisor(st)
        try:
            await sup.start()
            assert await sup.wait_ready(20)
            [e] = sup.engines
            old_pid, url = e.pid, e.backend.url
            assert old_pid is not None
            os.kill(old_pid, signal.SIGKILL)
            await until(lambda: not e.backend.routable, timeout=5, what="backend out of routing")
            assert e.state in (S.RESTARTING, S.STARTING)
            await until(lambda: e.state is S.READY, timeout=15, what="engine ready again")
            assert e.restarts == 1 and e.pid not in (None, old_pid)
            assert e.backend.url == url  # same port: the restart reuses it
            assert "killed by SIGKILL" in (e.backend.last_error or "")
            row = next(r for r in sup.status() if r["id"] == e.id)
            assert row["restarts"] == 1 and row["state"] == "ready" and row["pid"] == e.pid
            assert [h.new for h in e.history] == [S.READY, S.RESTARTING, S.STARTING, S.READY]
        finally:
            await sup.stop()

    run(main())


def test_crash_loop_backs_off_exponentially_and_shows_the_error(tmp_path: Path) -> None:
    script = "import sys; print('fatal: cannot load weights', flush=True); sys.exit(3)"
    st = make_state(
        sim_config(
            tmp_path, f'  broken: {{engine: command, model: m, command: [{sys.executable}, -c, "{script}"]}}'
        )
    )

    async def main() -> None:
        sup = Supervisor(st)
        try:
            await sup.start()
            assert await sup.wait_ready(10) is False  # settles as FAILED, not READY
            [e] = sup.engines
            await until(lambda: e.restarts >= 4, timeout=15, what="four restarts")
            failed_at = [h.at for h in e.history if h.new is S.FAILED]
            restart_at = [h.at for h in e.history if h.new is S.STARTING]
            delays = [r - f for f, r in zip(failed_at, restart_at, strict=False)][:4]
            assert delays[0] >= 0.19
            for shorter, longer in zip(delays, delays[1:], strict=False):
                assert longer > shorter * 1.6, delays  # 0.2, 0.4, 0.8, 1.6
            row = next(r for r in sup.status() if r["id"] == e.id)
            assert row["state"] in ("failed", "starting") and row["restarts"] >= 4
            assert "exited with code 3 during start-up" in row["last_error"]
            assert "fatal: cannot load weights" in row["last_error"]
            assert "fatal: cannot load weights" in (sup.logs(e.id) or [])
        finally:
            await sup.stop()
        assert "fatal: cannot load weights" in (tmp_path / "logs" / "broken_command-0.log").read_text()

    run(main())


def test_bad_spec_fails_once_and_missing_binary_is_retried(tmp_path: Path) -> None:
    st = make_state(
        sim_config(
            tmp_path,
            """  a: {engine: vllm, model: m, args: [--port, "9"]}
  b: {engine: command, model: m, command: [/nonexistent/engine-binary]}""",
        )
    )

    async def main() -> None:
        sup = Supervisor(st)
        try:
            await sup.start()
            assert await sup.wait_ready(5) is False
            a, b = sup.engines
            assert a.state is S.FAILED and "must not set --port" in (a.backend.last_error or "")
            await until(lambda: b.restarts >= 2, what="missing binary retried")
            assert a.restarts == 0  # a spec error is not retried
            assert "cannot start '/nonexistent/engine-binary'" in (b.backend.last_error or "")
        finally:
            await sup.stop()

    run(main())


def test_replicas_get_disjoint_devices_distinct_ports_and_show_in_the_admin_api(tmp_path: Path) -> None:
    st = make_state(
        sim_config(
            tmp_path,
            """  chat:
    engine: sim
    model: m
    replicas: 2
    gpus_per_replica: 2
    env: {EXTRA: "1"}
  ext:
    endpoints: ["http://127.0.0.1:9/v1"]""",
            engines="gpus: [g0, g1, g2, g3]\n  device_env: [CUDA_VISIBLE_DEVICES, XPU_VISIBLE_DEVICES]",
            auth="auth: {admin_key: adm}",
        )
    )

    async def main() -> None:
        sup = Supervisor(st)
        st.supervisor = sup
        try:
            await sup.start()
            assert await sup.wait_ready(20)
            e0, e1 = sup.engines
            env0, env1 = environ_of(e0.pid or 0), environ_of(e1.pid or 0)
            assert (env0["CUDA_VISIBLE_DEVICES"], env1["CUDA_VISIBLE_DEVICES"]) == ("g0,g1", "g2,g3")
            assert env1["XPU_VISIBLE_DEVICES"] == "g2,g3" and env0["EXTRA"] == "1"
            assert e0.port != e1.port
            lo, hi = st.config.engines.port_range
            assert lo <= e0.port <= hi and lo <= e1.port <= hi

            app = build_admin_app(st)
            headers = {"authorization": "Bearer adm"}
            async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://gw") as c:
                r = await c.get("/admin/backends", headers=headers)
                assert r.status_code == 200
                rows = {row["id"]: row for row in r.json()["data"]}
                assert set(rows) == {"chat/sim-0", "chat/sim-1", "ext@http://127.0.0.1:9/v1"}
                assert rows["chat/sim-1"]["devices"] == "g2,g3" and rows["chat/sim-1"]["pid"] == e1.pid
                assert rows["ext@http://127.0.0.1:9/v1"]["source"] == "endpoint"
                for key in (
                    "pool",
                    "engine",
                    "state",
                    "port",
                    "url",
                    "outstanding",
                    "restarts",
                    "last_error",
                    "uptime",
                ):
                    assert key in rows["chat/sim-0"]
                r = await c.get("/admin/backends/chat/sim-0/logs", params={"lines": 3}, headers=headers)
                assert r.status_code == 200 and len(r.json()["lines"]) <= 3
                assert any("listening on" in line for line in r.json()["lines"])
                r = await c.get("/admin/backends/nope/logs", headers=headers)
                assert r.status_code == 404
                assert (await c.get("/admin/backends")).status_code == 401
        finally:
            await sup.stop()

    run(main())


def test_unhealthy_engine_leaves_routing_recovers_and_is_restarted_when_hung(tmp_path: Path) -> None:
    sick = tmp_path / "sick"
    st = make_state(
        sim_config(
            tmp_path,
            f"""  fake:
    engine: command
    model: m
    command: [{sys.executable}, {FAKE_ENGINE}, "{{port}}", "{{served_name}}", --sick-file, {sick}]
    health: {{interval: 0.05, failure_threshold: 2, restart_after: 0.6}}""",
        )
    )

    async def main() -> None:
        sup = Supervisor(st)
        try:
            await sup.start()
            assert await sup.wait_ready(10)
            [e] = sup.engines
            sick.touch()
            await until(lambda: e.state is S.UNHEALTHY, what="unhealthy")
            assert not e.backend.routable and "health check failing" in (e.backend.last_error or "")
            sick.unlink()
            await until(lambda: e.state is S.READY, what="healthy again")
            assert e.restarts == 0
            sick.touch()  # now it stays sick: restarted after restart_after
            await until(lambda: e.restarts == 1, what="restart of the hung engine")
            sick.unlink()
            await until(lambda: e.state is S.READY, what="ready after restart")
            assert S.RESTARTING in [h.new for h in e.history]
        finally:
            await sup.stop()

    run(main())


def test_stop_escalates_to_sigkill_and_kills_the_engines_workers(tmp_path: Path) -> None:
    st = make_state(
        sim_config(
            tmp_path,
            f"""  fake:
    engine: command
    model: m
    command: [{sys.executable}, {FAKE_ENGINE}, "{{port}}", "{{served_name}}", --ignore-term, --child]""",
        ).replace("stop_grace_seconds: 2", "stop_grace_seconds: 0.5")
    )

    async def main() -> tuple[int, int]:
        sup = Supervisor(st)
        try:
            await sup.start()
            assert await sup.wait_ready(10)
            [e] = sup.engines
            line = next(x for x in sup.logs(e.id) or [] if x.startswith("child pid"))
            pid, child = e.pid or 0, int(line.split()[-1])
        finally:
            t0 = time.monotonic()
            await sup.stop()
            took = time.monotonic() - t0
        assert 0.4 < took < 3
        return pid, child

    pid, child = run(main())
    assert pid_gone(pid) and pid_gone(child)


def test_external_endpoint_is_probed_unhealthy_then_ready(tmp_path: Path) -> None:
    from gateway.sim.testing import SimProcess

    sim = SimProcess(["--served-model-name", "ext"])
    port = sim.port
    try:
        st = make_state(
            sim_config(
                tmp_path,
                f'  ext: {{endpoints: ["{sim.base_url}"]}}',
                engines="endpoint_health: {interval: 0.05, failure_threshold: 2, timeout: 0.5}",
            )
        )

        async def main() -> None:
            nonlocal sim
            sup = Supervisor(st)
            try:
                await sup.start()
                [b] = st.pools["ext"].backends
                assert b.state is S.READY
                await asyncio.to_thread(sim.close)
                await until(lambda: b.state is S.UNHEALTHY, what="endpoint unhealthy")
                assert not b.routable
                sim = await asyncio.to_thread(SimProcess, ["--served-model-name", "ext"], port)
                await until(lambda: b.state is S.READY, what="endpoint ready again")
                row = sup.status()[0]
                assert row["source"] == "endpoint" and row["state"] == "ready"
            finally:
                await sup.stop()

        run(main())
    finally:
        sim.close()


PARENT = """
import asyncio, sys
from gateway import config
from gateway.keys.auth import KeyRing
from gateway.state import GatewayState, build_names, build_pools
from gateway.engines.supervisor import Supervisor

async def main():
    cfg = config.loads(sys.argv[1])
    st = GatewayState(cfg, None, build_pools(cfg), build_names(cfg), KeyRing.from_config(cfg.auth))
    sup = Supervisor(st)
    await sup.start()
    ok = await sup.wait_ready(30)
    print("READY" if ok else "NOT-READY", *[e.pid for e in sup.engines], flush=True)
    await asyncio.Event().wait()

asyncio.run(main())
"""


def test_kill_9_of_the_gateway_leaves_no_engine_behind(tmp_path: Path) -> None:
    cfg = sim_config(tmp_path, "  chat: {engine: sim, model: m, replicas: 2}")

    async def main() -> list[int]:
        parent = await asyncio.create_subprocess_exec(
            sys.executable,
            "-c",
            PARENT,
            cfg,
            stdout=asyncio.subprocess.PIPE,
            cwd=str(Path(__file__).parents[2]),
        )
        assert parent.stdout is not None
        try:
            line = (await asyncio.wait_for(parent.stdout.readline(), 30)).decode().split()
            assert line and line[0] == "READY", line
            pids = [int(p) for p in line[1:]]
            assert len(pids) == 2 and not any(pid_gone(p) for p in pids)
        finally:
            parent.kill()  # SIGKILL: no shutdown code runs in the gateway
            await parent.wait()
        await until(lambda: all(pid_gone(p) for p in pids), timeout=5, what="engines gone")
        return pids

    run(main())
