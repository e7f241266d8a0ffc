"""Config reload: replicas added and removed, specs replaced new-before-old, bad files
rejected with the old config still serving, and no failed request under load."""

from __future__ import annotations

import asyncio
import contextlib
import io
import threading
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest

from gateway.cli import main
from gateway.config import ConfigError
from gateway.engines.supervisor import Supervisor
from gateway.reload import reload
from gateway.routing.backend import BackendState

from .engines.util import make_state, pid_gone, run, until
from .gw import ADMIN_KEY, CLIENT_KEY, GatewayServer, auth_yaml, wait_until

S = BackendState


def write(path: Path, pools: str, head: str = "auth: {mode: none}") -> str:
    path.write_text(
        f"""{head}
store: "memory://"
server: {{drain_seconds: 10}}
engines: {{log_dir: {path.parent}/logs, restart_backoff_initial: 0.2, stop_grace_seconds: 2}}
pools:
{pools}
"""
    )
    return path.read_text()


def sim_pool(replicas: int = 1, extra: str = "") -> str:
    return f"""  chat:
    engine: sim
    model: m
    replicas: {replicas}
    args: [--ttft-ms, "1", --itl-ms, "2"{extra}]
    health: {{interval: 0.2}}
"""


def ready_ids(st: Any, pool: str = "chat") -> list[str]:
    return sorted(b.id for b in st.pools[pool].backends if b.state is S.READY)


def test_reload_adds_and_removes_replicas_and_drains_in_flight_work(tmp_path: Path) -> None:
    cfg = tmp_path / "gw.yaml"
    st = make_state(write(cfg, sim_pool(1)), str(cfg))

    async def main() -> None:
        sup = st.supervisor = Supervisor(st)
        try:
            await sup.start()
            assert await sup.wait_ready(20)
            pool = st.pools["chat"]

            write(cfg, sim_pool(2))
            summary = await reload(st)
            assert summary["added"] == ["chat/sim-1"] and summary["removed"] == []
            assert await sup.wait_ready(20)
            assert ready_ids(st) == ["chat/sim-0", "chat/sim-1"]

            # Hold a request on sim-1, then scale down: it leaves routing at once but its
            # process serves the request to the end before it is stopped.
            b1 = pool.get("chat/sim-1")
            assert b1 is not None
            b1.outstanding += 1
            e1 = sup.find("chat/sim-1")
            assert e1 is not None and e1.pid is not None
            write(cfg, sim_pool(1))
            summary = await reload(st)
            assert summary["removed"] == ["chat/sim-1"]
            await until(lambda: b1.state is S.DRAINING, what="draining")
            assert pool.get("chat/sim-1") is None and ready_ids(st) == ["chat/sim-0"]
            await asyncio.sleep(0.3)
            assert not pid_gone(e1.pid) and b1.state is S.DRAINING  # still finishing our request
            pool.release(b1)
            await until(lambda: b1.state is S.STOPPED, what="stopped after drain")
            await until(lambda: pid_gone(e1.pid or 0), what="process gone")
            assert [e.id for e in sup.engines] == ["chat/sim-0"]
        finally:
            await sup.stop()

    run(main())


def test_changed_spec_is_replaced_new_before_old(tmp_path: Path) -> None:
    cfg = tmp_path / "gw.yaml"
    st = make_state(write(cfg, sim_pool(1)), str(cfg))

    async def main() -> None:
        sup = st.supervisor = Supervisor(st)
        try:
            await sup.start()
            assert await sup.wait_ready(20)
            pool = st.pools["chat"]
            old = pool.get("chat/sim-0")
            write(cfg, sim_pool(1, ', --startup-seconds, "1"'))
            summary = await reload(st)
            assert summary["changed"] == ["chat/sim-0 -> chat/sim-1"]
            new = pool.get("chat/sim-1")
            assert old is not None and new is not None
            # The old engine keeps serving while the new one loads.
            assert old.state is S.READY and new.state is S.STARTING and old in pool.backends
            await until(lambda: new.state is S.READY, what="new engine ready")
            await until(lambda: old.state is S.STOPPED, what="old engine stopped")
            assert pool.backends == [new] and pool is st.pools["chat"]
            assert [e.id for e in sup.engines] == ["chat/sim-1"]
        finally:
            await sup.stop()

    run(main())


def test_invalid_reload_is_rejected_and_the_old_config_keeps_serving(tmp_path: Path) -> None:
    cfg = tmp_path / "gw.yaml"
    text = write(cfg, "  chat: {endpoints: ['http://127.0.0.1:9/v1']}")
    st = make_state(text, str(cfg))
    before, pools = st.config, dict(st.pools)

    async def main() -> None:
        for bad in (
            "pools: [not, a, mapping",  # YAML
            text.replace("endpoints:", "endpoint:"),  # unknown key
            text + "  big: {engine: vllm, model: m, gpus_per_replica: 4}\n",  # no devices in inventory
        ):
            cfg.write_text(bad)
            with pytest.raises(ConfigError):
                await reload(st)
            assert st.config is before and st.pools == pools
        cfg.unlink()
        with pytest.raises(ConfigError, match="cannot read"):
            await reload(st)

    run(main())


def test_reload_of_pools_endpoints_aliases_and_keys(tmp_path: Path) -> None:
    from gateway.keys.auth import Key, hash_key

    cfg = tmp_path / "gw.yaml"
    head = f"auth: {{keys: [{{name: a, key_sha256: {hash_key('k-a')}}}]}}"
    st = make_state(
        write(
            cfg,
            "  a: {endpoints: ['http://127.0.0.1:9/v1'], aliases: [x]}\n  b: {endpoints: ['http://127.0.0.1:10/v1']}",
            head,
        ),
        str(cfg),
    )
    st.keyring.put(Key(name="dyn", key_sha256=hash_key("k-dyn"), source="dynamic"))
    pool_a = st.pools["a"]
    head2 = f"auth: {{keys: [{{name: b, key_sha256: {hash_key('k-b')}}}]}}"
    write(
        cfg,
        "  a: {endpoints: ['http://127.0.0.1:9/v1', 'http://127.0.0.1:11/v1'], aliases: [y], balancer: round_robin,"
        " max_concurrency: 7}\n  c: {endpoints: ['http://127.0.0.1:12/v1']}",
        head2,
    )
    summary = run(reload(st))
    assert st.pools["a"] is pool_a and pool_a.balancer.name == "round_robin"
    assert [b.id for b in pool_a.backends] == ["a@http://127.0.0.1:9/v1", "a@http://127.0.0.1:11/v1"]
    assert all(b.max_concurrency == 7 for b in pool_a.backends)
    assert set(st.pools) == {"a", "c"} and st.resolve("y") is pool_a and st.resolve("x") is None
    assert st.keyring.lookup("k-b") is not None and st.keyring.lookup("k-a") is None
    assert st.keyring.lookup("k-dyn") is not None  # dynamic keys survive a reload
    assert "pool c" in summary["added"] and "a@http://127.0.0.1:11/v1" in summary["added"]
    assert "pool b" in summary["removed"] and "pool a" in summary["changed"] and "auth" in summary["changed"]


def test_no_request_fails_while_reloads_add_replace_and_remove_engines(tmp_path: Path) -> None:
    cfg = tmp_path / "gw.yaml"
    head = auth_yaml().strip()
    gw = GatewayServer(write(cfg, sim_pool(1), head), config_path=str(cfg)).start()
    stop = threading.Event()
    ok: list[int] = []
    failures: list[str] = []

    def load() -> None:
        client = openai.OpenAI(base_url=gw.base_url, api_key=CLIENT_KEY, max_retries=0, timeout=20)
        try:
            while not stop.is_set():
                try:
                    stream = client.chat.completions.create(
                        model="chat", messages=[{"role": "user", "content": "hi"}], max_tokens=20, stream=True
                    )
                    n = sum(1 for chunk in stream if chunk.choices and chunk.choices[0].delta.content)
                    ok.append(n)
                except Exception as e:  # every failure is a test failure; keep them for the message
                    failures.append(repr(e))
        finally:
            client.close()

    def admin_reload() -> httpx.Response:
        return httpx.post(
            gw.url + "/admin/reload", headers={"authorization": f"Bearer {ADMIN_KEY}"}, timeout=30
        )

    def cli(*args: str) -> str:
        out = io.StringIO()
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(io.StringIO()):
            assert main([*args, "--url", gw.url, "--admin-key", ADMIN_KEY]) == 0
        return out.getvalue()

    def engines() -> list[tuple[str, str]]:
        return [(r["id"], r["state"]) for r in gw.state.supervisor.status()]

    threads = [threading.Thread(target=load) for _ in range(6)]
    try:
        assert gw.call(lambda: gw.state.supervisor.wait_ready(20))
        for t in threads:
            t.start()
        assert wait_until(lambda: len(ok) > 20, timeout=10)

        write(cfg, sim_pool(2), head)  # add a replica
        assert admin_reload().json()["added"] == ["chat/sim-1"]
        assert wait_until(lambda: engines() == [("chat/sim-0", "ready"), ("chat/sim-1", "ready")], timeout=20)

        write(cfg, sim_pool(2, ', --seed, "7"'), head)  # change the spec: both replaced, new first
        assert len(admin_reload().json()["changed"]) == 2
        assert wait_until(lambda: engines() == [("chat/sim-2", "ready"), ("chat/sim-3", "ready")], timeout=20)

        write(cfg, sim_pool(1, ', --seed, "7"'), head)  # remove a replica
        assert admin_reload().json()["removed"] == ["chat/sim-3"]
        assert wait_until(lambda: engines() == [("chat/sim-2", "ready")], timeout=20)

        table = cli("status")
        assert "chat/sim-2" in table and "1/1 ready" in table and "chat/sim-0" not in table
        assert "listening on" in cli("status", "--logs", "chat/sim-2", "--lines", "5")

        cfg.write_text("pools: {")  # a broken file changes nothing
        r = admin_reload()
        assert r.status_code == 400 and "invalid YAML" in r.json()["error"]["message"]
        with pytest.raises(SystemExit):
            cli("reload")
        served = len(ok)
        assert wait_until(lambda: len(ok) > served + 20, timeout=10)
    finally:
        stop.set()
        for t in threads:
            t.join(30)
        gw.stop()
    assert failures == [], failures[:5]
    assert len(ok) > 100 and all(n > 0 for n in ok)


def test_replacement_short_of_devices_starts_what_fits_then_the_rest_after_old_ones_stop(
    tmp_path: Path,
) -> None:
    cfg = tmp_path / "gw.yaml"
    pool = '  chat: {engine: sim, model: m, replicas: 2, gpus_per_replica: 1, args: [--seed, "1"]}'
    text = write(cfg, pool).replace("engines: {", "engines: {gpus: [g0, g1, g2], ")
    cfg.write_text(text)
    st = make_state(text, str(cfg))

    async def main() -> None:
        sup = st.supervisor = Supervisor(st)
        try:
            await sup.start()
            assert await sup.wait_ready(20)
            assert [e.devices for e in sup.engines] == [("g0",), ("g1",)]
            old = list(sup.engines)
            cfg.write_text(text.replace('"1"', '"2"'))
            summary = await reload(st)
            # One new engine fits on the free device; the other waits for an old one's device.
            assert summary["added"] == ["chat/sim-2", "chat/sim (after devices free up)"]
            assert ready_ids(st) == ["chat/sim-0", "chat/sim-1"]  # the old ones serve meanwhile
            await until(lambda: [e.id for e in sup.engines] == ["chat/sim-2", "chat/sim-3"], timeout=20)
            assert await sup.wait_ready(20)
            assert sup.engines[0].devices == ("g2",) and sup.engines[1].devices in (("g0",), ("g1",))
            # The old engines left only after the first new one was READY: never an empty pool.
            [new_ready] = [h.at for h in sup.engines[0].history if h.new is S.READY]
            drained = [h.at for e in old for h in e.history if h.new is S.DRAINING]
            assert len(drained) == 2 and min(drained) >= new_ready
            assert ready_ids(st) == ["chat/sim-2", "chat/sim-3"]
        finally:
            await sup.stop()

    run(main())


def test_endpoint_added_by_reload_is_sent_the_name_it_serves(tmp_path: Path) -> None:
    from gateway.sim.testing import SimProcess

    fast = ["--ttft-ms", "1", "--itl-ms", "1"]
    with SimProcess(["--served-model-name", "eng-a", *fast]) as a, SimProcess(["--served-model-name", "eng-b", *fast]) as b:
        path = tmp_path / "gw.yaml"

        def write(url: str) -> None:
            path.write_text(auth_yaml() + f'store: "memory://"\npools:\n  m: {{endpoints: [{url}]}}\n')

        write(a.base_url)
        with GatewayServer(path.read_text(), config_path=str(path)) as gw, \
                openai.OpenAI(base_url=gw.base_url, api_key=CLIENT_KEY, max_retries=0) as c:
            msgs = [{"role": "user", "content": "x"}]
            assert c.chat.completions.create(model="m", messages=msgs, max_tokens=2).model == "m"  # type: ignore[arg-type]
            write(b.base_url)
            gw.call(lambda: reload(gw.state))
            new = gw.state.pools["m"].backends
            assert [x.url for x in new] == [b.base_url]
            assert wait_until(lambda: new[0].served_model == "eng-b", 5)
            r = c.chat.completions.create(model="m", messages=msgs, max_tokens=2)  # type: ignore[arg-type]
            assert r.model == "m" and r.choices[0].message.content
            assert b.metrics()["vllm:request_success_total"] == 1


# Regression (issue #11): spawn_engines=False lived on the app; reload read a side channel.
def test_reload_keeps_spawn_engines_off(tmp_path: Path) -> None:
    path = tmp_path / "gw.yaml"
    path.write_text(_spawn_cfg(str(tmp_path), '  m: {endpoints: ["http://127.0.0.1:9/v1"]}\n'))
    with GatewayServer(path.read_text(), spawn_engines=False, config_path=str(path)) as gw:
        assert gw.state.supervisor is None
        path.write_text(_spawn_cfg(str(tmp_path), _SPAWN_POOL))
        summary: dict[str, Any] = gw.call(lambda: reload(gw.state))
        assert "pool m" not in summary["added"]
        # Engines stay off: the embedding process asked the gateway not to spawn any.
        assert gw.state.supervisor is None


def _spawn_cfg(tmp: str, pools: str) -> str:
    return f"""
auth: {{mode: none}}
store: "memory://"
engines:
  port_range: [21000, 21999]
  log_dir: {tmp}/logs
  restart_backoff_initial: 0.2
pools:
{pools}
"""


_SPAWN_POOL = """  m:
    engine: sim
    model: /models/sim
    args: [--ttft-ms, "1", --itl-ms, "1"]
    startup_timeout: 30
"""


