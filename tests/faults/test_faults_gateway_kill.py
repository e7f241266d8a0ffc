"""SIGKILL of the gateway under load (issue #14, finding 4): no engine outlives it, and the
ledger holds every request that finished more than `LOSS_WINDOW_S` before the kill.

With the old 1 s flush interval the last ~1 s of records were lost (13, 17 and 60
requests in the held-out runs); this test failed on it."""

from __future__ import annotations

import os
import signal
import sqlite3
import threading
import time
from pathlib import Path

import httpx

from tests.gw import ADMIN_KEY, CLIENT_KEY, auth_yaml, wait_until
from tests.metering.procs import GatewayProcess

LOSS_WINDOW_S = 0.2  # the README's promise


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # A zombie still answers kill(0); its state says it is gone.
    try:
        return Path(f"/proc/{pid}/stat").read_text().split()[2] != "Z"
    except OSError:
        return False


def test_sigkill_under_load_loses_at_most_the_last_200ms_and_no_engine_survives(tmp_path: Path) -> None:
    cfg = auth_yaml() + f"""
engines:
  port_range: [22000, 22999]
  log_dir: {tmp_path}/logs
pools:
  chat:
    engine: sim
    model: /models/sim
    replicas: 2
    args: [--ttft-ms, "2", --itl-ms, "2", --max-num-seqs, "64"]
    startup_timeout: 30
"""  # default store and metering: sqlite:///var/usage.db, the default commit window
    gw = GatewayProcess(cfg, tmp_path).start()
    try:
        admin = {"authorization": f"Bearer {ADMIN_KEY}"}
        rows = lambda: httpx.get(gw.url + "/admin/backends", headers=admin, timeout=5).json()["data"]  # noqa: E731
        assert wait_until(lambda: sum(r.get("state") == "ready" for r in rows()) == 2, timeout=30), rows()
        engine_pids = [r["pid"] for r in rows() if r.get("pid")]
        assert len(engine_pids) == 2

        done: dict[str, float] = {}  # request id -> when the client had the whole answer
        lock = threading.Lock()
        stop = threading.Event()

        def worker(w: int) -> None:
            with httpx.Client(base_url=gw.url, timeout=10) as c:
                i = 0
                while not stop.is_set():
                    rid = f"kill-{w}-{i}"
                    i += 1
                    body = {"model": "chat", "messages": [{"role": "user", "content": rid}],
                            "max_tokens": 8, "stream": w % 2 == 0}  # fmt: skip
                    try:
                        with c.stream("POST", "/v1/chat/completions", json=body,
                                      headers={"authorization": f"Bearer {CLIENT_KEY}", "x-request-id": rid}) as r:
                            r.read()
                            ok = r.status_code == 200 and (not body["stream"] or r.content.endswith(b"[DONE]\n\n"))
                        if ok:
                            t = time.monotonic()
                            with lock:
                                done[rid] = t
                    except httpx.HTTPError:
                        return  # the gateway is gone

        threads = [threading.Thread(target=worker, args=(w,)) for w in range(16)]
        for t in threads:
            t.start()
        def settled() -> int:  # finished longer ago than the loss window: these must all survive
            with lock:
                cutoff = time.monotonic() - LOSS_WINDOW_S
                return sum(1 for t in done.values() if t < cutoff)

        # Wait for the load itself, not a request count: a slow machine keeps more of them
        # inside the loss window at any instant.
        assert wait_until(lambda: settled() >= 250, timeout=60), settled()
        killed_at = time.monotonic()
        gw.signal(signal.SIGKILL)
        stop.set()
        for t in threads:
            t.join(15)
        gw.wait(10)

        # No engine survives its gateway (PR_SET_PDEATHSIG).
        assert wait_until(lambda: not any(_alive(p) for p in engine_pids), timeout=10), engine_pids

        conn = sqlite3.connect(tmp_path / "var" / "usage.db")
        ids = {r[0] for r in conn.execute("SELECT request_id FROM usage")}
        conn.close()
        with lock:
            finished = dict(done)
        must = {rid for rid, t in finished.items() if t < killed_at - LOSS_WINDOW_S}
        missing = sorted(killed_at - finished[rid] for rid in must - ids)
        lost_recent = [rid for rid, t in finished.items() if t >= killed_at - LOSS_WINDOW_S and rid not in ids]
        print(f"finished={len(finished)} in_ledger={len(ids)} lost_within_window={len(lost_recent)} "
              f"lost_older={len(missing)} oldest_lost_age={missing[-1] if missing else 0:.3f}s")  # fmt: skip
        assert not missing, f"{len(missing)} finished requests older than {LOSS_WINDOW_S}s lost; ages {missing[-5:]}"
        assert len(must) >= 200  # the load was real
    finally:
        gw.stop()
