"""Where the gateway's CPU goes: py-spy samples of the gateway under the overhead load.

Two recordings at concurrency 32: non-stream, and stream with one write per event. py-spy
sees Python frames only; time in uvloop's C code (socket reads/writes, polling, callback
dispatch) shows up as the frame that entered the loop, reported here as "event loop (C)".
Skipped when py-spy is not installed (`.venv/bin/pip install py-spy`). Extra py-spy
arguments come from `BENCH_PYSPY_ARGS` (e.g. `--gil`: only the thread holding the GIL,
which leaves out threads waiting on it).
"""

from __future__ import annotations

import collections
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

from .. import loadgen, procs, workload
from ..context import Bench
from ..measure import Setup, point
from .overhead import TOKENS, sim_args

CONCURRENCY = 32


def _py_spy() -> str | None:
    local = Path(sys.executable).parent / "py-spy"
    return str(local) if local.exists() else shutil.which("py-spy")


def component(frame: str) -> str:
    m = re.search(r"\(([^:)]*)", frame)
    path = m.group(1) if m else ""
    if "asyncio/runners.py" in path:
        return "event loop (uvloop C code: I/O, polling, callbacks)"
    if path.startswith("gateway/proxy/client.py"):
        return "gateway/proxy/client.py (client to engines)"
    if path.startswith("gateway/"):
        return path
    for lib in ("aiohttp", "uvicorn", "prometheus_client", "asyncio", "multidict", "yarl"):
        if path.startswith(lib + "/") or path.startswith(lib):
            return {"aiohttp": "aiohttp (client to engines)", "uvicorn": "uvicorn (HTTP server)"}.get(lib, lib)
    return "other" if path else "no Python frame (GC, C extensions)"


# Frames every sample of a thread has (process entry, the event loop's run call, a
# thread's bootstrap): left out of the inclusive tables, where they would only say 100%.
ENTRY = re.compile(r"^(<module>|main \(gateway/cli|_cmd_serve |serve \(gateway/server|Server\.(run|serve|_serve) |"
                   r"asyncio_run |Runner\.run |Thread\.(run|_bootstrap|_bootstrap_inner) )")


def summarise(raw: Path, top: int = 15) -> dict[str, Any]:
    by_component: collections.Counter[str] = collections.Counter()
    by_function: collections.Counter[str] = collections.Counter()
    # Inclusive: a frame (or component) counts once per sample if it is anywhere on the
    # stack, so a layer's whole cost shows (uvicorn's ASGI cycle, the proxy's relay...).
    incl_component: collections.Counter[str] = collections.Counter()
    incl_function: collections.Counter[str] = collections.Counter()
    total = 0
    for line in raw.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        if not count.isdigit():
            continue
        n = int(count)
        total += n
        frames = [re.sub(r":\d+\)$", ")", f) for f in stack.split(";")]
        leaf = frames[-1]
        by_component[component(leaf)] += n
        by_function[leaf] += n
        inner = {f for f in frames if not ENTRY.search(f)}
        for c in {component(f) for f in inner}:
            incl_component[c] += n
        for f in inner:
            incl_function[f] += n
    pct = (lambda c: [(k, 100.0 * v / total) for k, v in c.most_common(top)]) if total else (lambda c: [])
    return {"samples": total, "components": pct(by_component), "functions": pct(by_function),
            "inclusive_components": pct(incl_component), "inclusive_functions": pct(incl_function)}


def run(bench: Bench) -> dict[str, Any]:
    spy = _py_spy()
    if spy is None:
        return {"skipped": "py-spy is not installed"}
    seconds = bench.pick(2, 8)
    msgs = workload.messages_for(TOKENS)
    out: dict[str, Any] = {"seconds": seconds, "concurrency": CONCURRENCY, "profiles": {},
                           "subsystems": bench.subsystems.describe()}
    with procs.sims([sim_args("bench", 0), sim_args("paced", 1)]) as (zero, paced):
        pools = {"bench": {"endpoints": [zero.base_url], "max_concurrency": 4096},
                 "paced": {"endpoints": [paced.base_url], "max_concurrency": 4096}}
        headers = bench.subsystems.headers()
        with procs.subsystems_gateway("profile", pools, bench.placement, bench.subsystems) as gw:
            for label, model, stream, sim in (("non-stream", "bench", False, zero),
                                              ("stream, 1 write per event", "paced", True, paced)):
                body = workload.chat_body(model, msgs, TOKENS, stream=stream)
                raw = gw.dir / f"py-spy-{model}.txt"
                # py-spy itself runs on the client CPU (it inherits this process's affinity).
                rec = subprocess.Popen([spy, "record", "--pid", str(gw.pid), "--format", "raw", "--rate", "250",
                                        "--duration", str(seconds), "--nonblocking", "-o", str(raw),
                                        *os.environ.get("BENCH_PYSPY_ARGS", "").split()],
                                       stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)

                def raw_for(t: loadgen.Target, body: bytes = body) -> bytes:
                    return loadgen.build_request(t, "/v1/chat/completions", body, headers)

                r = bench.run(point([gw.target], raw_for, CONCURRENCY, stream, Setup(seconds - 1.0, 0.5, 1), [gw.pid],
                                    [sim.pid]))
                try:
                    _, err = rec.communicate(timeout=seconds + 20)
                except subprocess.TimeoutExpired:
                    rec.kill()
                    _, err = rec.communicate()
                if rec.returncode != 0 or not raw.exists():
                    out["profiles"][label] = {"error": (err or b"").decode(errors="replace")[-500:]}
                    continue
                out["profiles"][label] = {**summarise(raw), "cpu_us": r["server_cpu_us"], "rps": r["rps"]}
                bench.log(f"profile {label}: {out['profiles'][label]['components'][:3]}")
    return out
