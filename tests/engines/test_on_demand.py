"""Engines started on demand behind the HTTP gateway: first request starts, idle sleeps or
stops, the next request wakes; a wake that fails restarts the engine; an engine that
refuses to sleep is stopped instead. Simulator engines, real sockets, the openai SDK."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx
import openai

from gateway.sim.testing import free_port
from tests.gw import ADMIN_KEY, CLIENT_KEY, GatewayServer, auth_yaml, wait_until

from .util import pid_gone


def _cfg(tmp: Path, pool: str, engines: str = "") -> str:
    return auth_yaml() + f"""
store: "memory://"
engines:
  port_range: [22000, 22999]
  log_dir: {tmp}/logs
  restart_backoff_initial: 0.2
  stop_grace_seconds: 2
  {engines}
pools:
{pool}
"""


def _pool(name: str, extra: str, args: str = '--ttft-ms, "5", --itl-ms, "5"') -> str:
    return f"""  {name}:
    engine: sim
    model: /models/{name}
    args: [{args}]
    start: on_demand
    startup_timeout: 30
    health: {{interval: 0.2}}
    {extra}
"""


def _row(gw: GatewayServer, pool: str) -> dict[str, Any]:
    r = httpx.get(gw.url + "/admin/backends", headers={"Authorization": f"Bearer {ADMIN_KEY}"}, timeout=5)
    assert r.status_code == 200
    [row] = [x for x in r.json()["data"] if x["pool"] == pool]
    return row


def _sim_state(gw: GatewayServer, pool: str) -> dict[str, Any]:
    port = _row(gw, pool)["port"]
    return httpx.get(f"http://127.0.0.1:{port}/sim/state", timeout=5).json()


def _chat(c: openai.OpenAI, model: str) -> str:
    r = c.chat.completions.create(model=model, messages=[{"role": "user", "content": "hi"}], max_tokens=5)
    return r.choices[0].finish_reason or ""


def _metric(gw: GatewayServer, name: str, text: str | None = None, **labels: str) -> float:
    want = ",".join(f'{k}="{v}"' for k, v in sorted(labels.items()))
    for line in (text if text is not None else httpx.get(gw.url + "/metrics", timeout=5).text).splitlines():
        if line.startswith(name + "{"):
            got = ",".join(sorted(line[line.index("{") + 1 : line.index("}")].split(",")))
            if got == want:
                return float(line.rsplit(" ", 1)[1])
    raise AssertionError(f"no sample {name}{{{want}}}")


def test_first_request_starts_idle_sleeps_next_request_wakes(tmp_path: Path) -> None:
    args = '--ttft-ms, "5", --itl-ms, "5", --startup-seconds, "1", --wake-seconds, "0.3", --sleep-seconds, "0.1"'
    cfg = _cfg(tmp_path, _pool("a", "sleep: 1\n    idle_timeout: 1", args))
    with GatewayServer(cfg) as gw:
        row = _row(gw, "a")
        assert (row["state"], row["pid"], row["start"]) == ("stopped", None, "on_demand")
        models = httpx.get(gw.base_url + "/models", headers={"Authorization": f"Bearer {CLIENT_KEY}"}).json()
        assert [m["id"] for m in models["data"]] == ["a"]  # listed while stopped
        c = openai.OpenAI(base_url=gw.base_url, api_key=CLIENT_KEY, max_retries=0, timeout=30)

        assert _chat(c, "a") == "length"  # started by this request, which waited for it
        row = _row(gw, "a")
        pid = row["pid"]
        assert row["state"] == "ready" and pid is not None and row["last_load_seconds"] >= 1.0

        assert wait_until(lambda: _row(gw, "a")["state"] == "sleeping", timeout=10)
        sim = _sim_state(gw, "a")["sleep"]
        assert sim["is_sleeping"] and sim["level"] == 1

        assert _chat(c, "a") == "length"  # woken by this one
        row = _row(gw, "a")
        # On a loaded machine the 1 s idle timeout may already have put it back to sleep.
        assert row["state"] in ("ready", "draining", "sleeping") and row["pid"] == pid and row["restarts"] == 0
        assert 0.3 <= row["last_wake_seconds"] < row["last_load_seconds"]
        ops = [t["op"] for t in _sim_state(gw, "a")["sleep"]["transitions"]]
        assert ops[:2] == ["sleep", "wake_up"]  # (a third, sleep again, may follow)
        assert _metric(gw, "gateway_engine_wake_seconds_count", pool="a") == 1
        assert _metric(gw, "gateway_engine_load_seconds_count", pool="a") == 1
        assert _metric(gw, "gateway_request_load_wait_seconds_count", pool="a") == 2
        # One-hot (it may be asleep again by now: idle_timeout is 1 s).
        states = ("stopped", "starting", "sleeping", "waking", "ready", "draining")
        text = httpx.get(gw.url + "/metrics", timeout=5).text  # one scrape: the state may move between two
        hot = {st: _metric(gw, "gateway_backend_state", text, pool="a", backend=row["id"], state=st) for st in states}
        assert sum(hot.values()) == 1 and (hot["ready"] or hot["draining"] or hot["sleeping"])


def test_idle_stop_without_sleep_mode_then_cold_start(tmp_path: Path) -> None:
    cfg = _cfg(tmp_path, _pool("a", "idle_timeout: 0.5"))
    with GatewayServer(cfg) as gw:
        c = openai.OpenAI(base_url=gw.base_url, api_key=CLIENT_KEY, max_retries=0, timeout=30)
        assert _chat(c, "a") == "length"
        pid = _row(gw, "a")["pid"]
        assert wait_until(lambda: _row(gw, "a")["state"] == "stopped", timeout=10)
        assert _row(gw, "a")["pid"] is None and wait_until(lambda: pid_gone(pid), timeout=5)
        assert _chat(c, "a") == "length"
        row = _row(gw, "a")
        assert row["state"] == "ready" and row["pid"] not in (None, pid)
        assert row["restarts"] == 0  # an on-demand start is not a restart


def test_engine_that_refuses_to_sleep_is_stopped_instead(tmp_path: Path) -> None:
    # Sleep asked for, but the engine's dev endpoints are off (as with a vLLM started without
    # VLLM_SERVER_DEV_MODE=1): /sleep answers 404; the gateway stops it and says why.
    cfg = _cfg(tmp_path, _pool("a", 'sleep: 1\n    idle_timeout: 0.5\n    env: {VLLM_SERVER_DEV_MODE: "0"}'))
    with GatewayServer(cfg) as gw:
        c = openai.OpenAI(base_url=gw.base_url, api_key=CLIENT_KEY, max_retries=0, timeout=30)
        assert _chat(c, "a") == "length"
        assert wait_until(lambda: _row(gw, "a")["state"] == "stopped", timeout=10)
        row = _row(gw, "a")
        assert row["sleep_level"] == 0
        logs = gw.state.supervisor.logs(row["id"])
        assert any("cannot sleep" in line and "404" in line for line in logs)
        assert _chat(c, "a") == "length"
        assert _row(gw, "a")["state"] == "ready"


def test_failed_wake_restarts_the_engine(tmp_path: Path) -> None:
    # A process outside the gateway takes the device while `a` sleeps: the wake answers
    # 500 "CUDA out of memory", so the gateway restarts `a` (which cannot start until the
    # device is free again); the waiting request is served once it is.
    dev = tmp_path / "devices"
    dev.mkdir()
    args = '--ttft-ms, "5", --itl-ms, "5", --wake-seconds, "0.1", --sleep-seconds, "0.05"'
    pool = _pool("a", 'sleep: 1\n    idle_timeout: 0.5\n    devices: ["0"]', args)
    cfg = _cfg(tmp_path, pool, 'gpus: ["0"]')
    os.environ["SIM_DEVICE_DIR"] = str(dev)
    hog: subprocess.Popen[bytes] | None = None
    try:
        with GatewayServer(cfg) as gw:
            c = openai.OpenAI(base_url=gw.base_url, api_key=CLIENT_KEY, max_retries=0, timeout=60)
            assert _chat(c, "a") == "length"
            assert wait_until(lambda: _row(gw, "a")["state"] == "sleeping", timeout=10)
            pid = _row(gw, "a")["pid"]
            port = free_port()
            env = {**os.environ, "CUDA_VISIBLE_DEVICES": "0"}
            hog = subprocess.Popen(
                [sys.executable, "-m", "gateway.sim", "--port", str(port), "--model", "/models/hog"],
                env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
            )  # fmt: skip
            assert wait_until(lambda: _up(port), timeout=20)

            def release_when_restarting() -> None:
                assert wait_until(lambda: _row(gw, "a")["restarts"] >= 1, timeout=20)
                assert hog is not None
                hog.kill()
                hog.wait()

            import threading

            t = threading.Thread(target=release_when_restarting)
            t.start()
            assert _chat(c, "a") == "length"
            t.join()
            row = _row(gw, "a")
            assert row["state"] == "ready" and row["pid"] != pid and row["restarts"] >= 1
            [engine] = gw.state.supervisor.engines
            path = [(str(h.old), str(h.new)) for h in engine.history]
            assert ("sleeping", "waking") in path and ("waking", "restarting") in path
            assert "wake failed" in path_reason(engine, "restarting")
    finally:
        os.environ.pop("SIM_DEVICE_DIR", None)
        if hog is not None and hog.poll() is None:
            hog.kill()
            hog.wait()


def path_reason(engine: Any, new: str) -> str:
    return next(h.reason for h in engine.history if str(h.new) == new)


def _up(port: int) -> bool:
    try:
        return httpx.get(f"http://127.0.0.1:{port}/health", timeout=1).status_code == 200
    except httpx.HTTPError:
        return False


def test_engine_that_refuses_the_sleep_flag_at_start_runs_without_it(tmp_path: Path) -> None:
    # vLLM's CPU build exits at start: "Sleep mode is not supported on current platform."
    refuser = Path(__file__).with_name("refuse_sleep.py")
    extra = f"sleep: 1\n    idle_timeout: 0.5\n    command: [{sys.executable}, {refuser}]"
    with GatewayServer(_cfg(tmp_path, _pool("a", extra))) as gw:
        c = openai.OpenAI(base_url=gw.base_url, api_key=CLIENT_KEY, max_retries=0, timeout=30)
        assert _chat(c, "a") == "length"
        row = _row(gw, "a")
        assert row["state"] == "ready" and row["sleep_level"] == 0 and "--enable-sleep-mode" not in row["argv"]
        assert wait_until(lambda: _row(gw, "a")["state"] == "stopped", timeout=10)  # idle: stopped, not asleep
        logs = gw.state.supervisor.logs(row["id"])
        assert any("Sleep mode is not supported" in line for line in logs)
        assert any("refused sleep mode" in line for line in logs)


def test_request_waiting_for_a_start_gets_a_503_with_retry_after_at_the_startup_timeout(tmp_path: Path) -> None:
    # The engine takes 30 s to load but the spec allows 1.5 s: the start fails at its
    # deadline and the waiting request is answered 503 (OpenAI-shaped, Retry-After) with why.
    args = '--ttft-ms, "5", --itl-ms, "5", --startup-seconds, "30"'
    pool = _pool("a", "queue: {timeout: 0.5}", args).replace("startup_timeout: 30", "startup_timeout: 1.5")
    with GatewayServer(_cfg(tmp_path, pool)) as gw:
        r = _post(gw, "a")
        assert _start_failed(r, "a", "not ready after 1.5s") >= 1
        assert _row(gw, "a")["state"] == "failed"


def _post(gw: GatewayServer, model: str) -> httpx.Response:
    return httpx.post(gw.base_url + "/chat/completions", headers={"Authorization": f"Bearer {CLIENT_KEY}"},
                      json={"model": model, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 5},
                      timeout=60)  # fmt: skip


def _start_failed(r: httpx.Response, pool: str, why: str) -> float:
    """Checks the fast-fail answer; returns its Retry-After."""
    assert r.status_code == 503, r.text
    err = r.json()["error"]
    assert set(err) == {"message", "type", "param", "code"}
    assert err["code"] == "engine_start_failed" and err["type"] == "server_error"
    assert f"Pool `{pool}`" in err["message"] and why in err["message"], err["message"]
    return float(r.headers["retry-after"])


def test_a_start_that_fails_outright_answers_the_waiting_request_at_once_then_backs_off(tmp_path: Path) -> None:
    # The binary does not exist. The startup budget is 60 s; the request must not wait it out.
    # Backoff 2 s: a second request inside it is answered without a launch; one after it
    # launches again (and fails again: the backoff doubles).
    pool = _pool("a", "command: [/nonexistent/bin/engine]").replace("startup_timeout: 30", "startup_timeout: 60")
    cfg = _cfg(tmp_path, pool).replace("restart_backoff_initial: 0.2", "restart_backoff_initial: 2")
    with GatewayServer(cfg) as gw:
        t0 = time.monotonic()
        retry = _start_failed(_post(gw, "a"), "a", "/nonexistent/bin/engine")
        assert time.monotonic() - t0 < 20  # the budget is 60 s: answered when the start failed
        row = _row(gw, "a")
        assert row["state"] == "failed" and row["pid"] is None and 1 <= retry <= 2
        [engine] = gw.state.supervisor.engines
        launches = sum(1 for line in engine.log.tail(100) if "start: /nonexistent/bin/engine" in line)
        assert launches == 1

        _start_failed(_post(gw, "a"), "a", "/nonexistent/bin/engine")  # inside the backoff
        assert sum(1 for line in engine.log.tail(100) if "start: /nonexistent/bin/engine" in line) == 1  # not relaunched

        assert wait_until(lambda: (_row(gw, "a")["retry_in"] or 0) == 0, timeout=5)
        retry = _start_failed(_post(gw, "a"), "a", "/nonexistent/bin/engine")  # after it: one more try
        assert sum(1 for line in engine.log.tail(100) if "start: /nonexistent/bin/engine" in line) == 2
        assert 2 < retry <= 4  # the backoff doubled
        assert gw.state.supervisor.engines[0].restarts == 0  # on-demand retries are not restarts


def test_an_engine_that_exits_before_ready_fails_its_waiters_fast_then_recovers(tmp_path: Path) -> None:
    # The engine exits during start-up (as vLLM does on a bad flag) while three requests
    # wait: all three get the 503 with the exit in its message. Once the cause is gone
    # (here: a marker file) the next request after the backoff starts it and is served.
    marker = tmp_path / "broken"
    marker.write_text("x")
    script = tmp_path / "engine.py"
    script.write_text(
        "import os, sys\n"
        f"if os.path.exists({str(marker)!r}):\n"
        "    print('ValueError: unrecognized arguments: --bad-flag', flush=True)\n"
        "    sys.exit(2)\n"
        "from gateway.sim.__main__ import main\n"
        "sys.exit(main())\n"
    )
    extra = f"command: [{sys.executable}, {script}]"
    with GatewayServer(_cfg(tmp_path, _pool("a", extra))) as gw:
        import concurrent.futures

        t0 = time.monotonic()
        with concurrent.futures.ThreadPoolExecutor(3) as ex:
            answers = list(ex.map(lambda _: _post(gw, "a"), range(3)))
        assert time.monotonic() - t0 < 15  # budget 30 s
        for r in answers:
            _start_failed(r, "a", "exit")
        assert "unrecognized arguments" in _row(gw, "a")["last_error"]
        marker.unlink()
        assert wait_until(lambda: (_row(gw, "a")["retry_in"] or 0) == 0, timeout=5)
        r = _post(gw, "a")
        assert r.status_code == 200, r.text
        assert _row(gw, "a")["state"] == "ready"


def test_level_2_sleep_wakes_by_reloading_the_weights(tmp_path: Path) -> None:
    # Level 2 drops the weights. A plain /wake_up would leave the engine serving from empty
    # memory; the gateway wakes the weights' memory, reloads them, then wakes the KV cache.
    args = ('--ttft-ms, "5", --itl-ms, "5", --startup-seconds, "1", --wake-seconds-level2, "0.5",'
            ' --sleep-seconds, "0.05"')
    with GatewayServer(_cfg(tmp_path, _pool("a", "sleep: 2\n    idle_timeout: 0.5", args))) as gw:
        c = openai.OpenAI(base_url=gw.base_url, api_key=CLIENT_KEY, max_retries=0, timeout=30)
        assert _chat(c, "a") == "length"
        assert wait_until(lambda: _row(gw, "a")["state"] == "sleeping", timeout=10)
        sim = _sim_state(gw, "a")["sleep"]
        assert sim["level"] == 2 and sim["weights_valid"] is False
        assert _chat(c, "a") == "length"
        row = _row(gw, "a")
        assert row["restarts"] == 0 and row["sleep_level"] == 2
        # (It may be asleep again by now: only what cannot change back is checked.)
        sim = _sim_state(gw, "a")["sleep"]
        assert sim["served_without_weights"] == 0
        ops = [(t["op"], t["tags"]) for t in sim["transitions"]]
        at = ops.index(("reload_weights", None))
        assert ops[at - 2 : at + 2] == [("sleep", None), ("wake_up", ["weights"]), ("reload_weights", None),
                                        ("wake_up", ["kv_cache"])]  # fmt: skip
        assert 0.4 <= row["last_wake_seconds"] < row["last_load_seconds"]  # the reload is most of it


def test_level_2_sleep_on_an_engine_that_cannot_reload_weights_restarts_then_stops_instead(tmp_path: Path) -> None:
    wrapper = Path(__file__).with_name("no_reload.py")
    extra = f"sleep: 2\n    idle_timeout: 0.5\n    command: [{sys.executable}, {wrapper}]"
    with GatewayServer(_cfg(tmp_path, _pool("a", extra))) as gw:
        c = openai.OpenAI(base_url=gw.base_url, api_key=CLIENT_KEY, max_retries=0, timeout=30)
        assert _chat(c, "a") == "length"
        assert wait_until(lambda: _row(gw, "a")["state"] == "sleeping", timeout=10)
        pid = _row(gw, "a")["pid"]
        assert _chat(c, "a") == "length"  # served by a restarted engine, never by the weightless one
        row = _row(gw, "a")
        assert row["pid"] != pid and row["restarts"] == 1 and row["sleep_level"] == 0
        assert "--enable-sleep-mode" not in row["argv"]
        assert "reload_weights answered 404" in (row["last_error"] or "")
        assert wait_until(lambda: _row(gw, "a")["state"] == "stopped", timeout=10)  # idle: stopped now


def test_an_engine_that_rejects_the_pools_key_fails_its_start_at_once(tmp_path: Path) -> None:
    # The engine's own --api-key (in args, which win) differs from the pool's: /health is
    # open, /v1/models answers 401 for ever. Readiness gives up at once, with the reason.
    args = '--ttft-ms, "5", --itl-ms, "5", --api-key, the-engines-key'
    pool = _pool("a", "api_key: not-the-engines-key", args).replace("startup_timeout: 30", "startup_timeout: 120")
    # The answer is the one a request meeting the engine's 401 gets (502, the gateway's
    # configuration is wrong, not the client's key), and the start is failed for good: a
    # relaunch would only load the model again to meet the same 401.
    with GatewayServer(_cfg(tmp_path, pool)) as gw:
        for _ in range(2):
            t0 = time.monotonic()
            r = _post(gw, "a")
            assert time.monotonic() - t0 < 30  # not the 120 s budget
            assert r.status_code == 502, r.text
            err = r.json()["error"]
            assert set(err) == {"message", "type", "param", "code"}
            assert err["code"] == "upstream_auth_failed" and "HTTP 401" in err["message"], err
        row = _row(gw, "a")
        assert row["state"] == "failed" and row["restarts"] == 0, row
        assert "rejected the gateway's key" in (row["last_error"] or "")
