"""The processes a benchmark needs: simulated engines, the gateway, redis; CPU and memory.

Everything binds to 127.0.0.1. Placement: the gateway is pinned to `GATEWAY_CPU`
(`taskset -c 0`); this process (the load generator) and the engines it starts run on
`CLIENT_CPUS`. Every process started here is stopped by its PID (SIGTERM, then SIGKILL).
"""

from __future__ import annotations

import contextlib
import http.client
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from gateway.sim.testing import SimProcess, free_port

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "benchmarks" / "out"
CLK_TCK = os.sysconf("SC_CLK_TCK")


@dataclass(frozen=True)
class Placement:
    gateway: set[int] | None  # CPUs of the gateway; None: no pinning (one-core machine)
    client: set[int] | None  # CPUs of the load generator and the engines

    @classmethod
    def detect(cls) -> Placement:
        cpus = sorted(os.sched_getaffinity(0))
        if len(cpus) < 2:
            return cls(None, None)
        return cls({cpus[0]}, set(cpus[1:]))

    def describe(self) -> str:
        if self.gateway is None:
            return "not pinned (fewer than 2 CPUs available)"
        return (f"gateway on CPU {_fmt(self.gateway)} (`taskset -c {_fmt(self.gateway)}`); load generator, "
                f"simulated engines and redis on CPU {_fmt(self.client or set())}")

    def pin_self(self) -> None:
        """Pin this process; children (engines, redis) inherit it."""
        if self.client is not None:
            os.sched_setaffinity(0, self.client)

    def gateway_prefix(self) -> list[str]:
        return ["taskset", "-c", _fmt(self.gateway)] if self.gateway is not None and shutil.which("taskset") else []


def _fmt(cpus: set[int]) -> str:
    return ",".join(str(c) for c in sorted(cpus))


# --- /proc readings ----------------------------------------------------------------------


def cpu_seconds(pid: int) -> float:
    """utime + stime of the whole process (all threads), in seconds."""
    user, kernel = cpu_split(pid)
    return user + kernel


def cpu_split(pid: int) -> tuple[float, float]:
    """(utime, stime) of the whole process (all threads), in seconds: the kernel's share
    is mostly the network stack (on loopback a send also runs the receiver's TCP input)."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return int(fields[11]) / CLK_TCK, int(fields[12]) / CLK_TCK


def rss_mb(pid: int) -> tuple[float, float]:
    """(current RSS, peak RSS) in MiB."""
    cur = peak = 0.0
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                cur = int(line.split()[1]) / 1024
            elif line.startswith("VmHWM:"):
                peak = int(line.split()[1]) / 1024
    return cur, peak


def open_fds(pid: int) -> int:
    try:
        return len(os.listdir(f"/proc/{pid}/fd"))
    except OSError:
        return -1


class CpuMeter:
    """CPU seconds of a set of PIDs between `start()` and `stop()`, and of them in the kernel."""

    def __init__(self, *pids: int) -> None:
        self.pids = pids
        self._t0: list[tuple[float, float]] = []
        self.seconds: list[float] = [0.0] * len(pids)
        self.kernel_seconds: list[float] = [0.0] * len(pids)

    def start(self) -> None:
        self._t0 = [cpu_split(p) for p in self.pids]

    def stop(self) -> None:
        now = [cpu_split(p) for p in self.pids]
        self.seconds = [u + k - u0 - k0 for (u, k), (u0, k0) in zip(now, self._t0, strict=True)]
        self.kernel_seconds = [k - k0 for (_, k), (_, k0) in zip(now, self._t0, strict=True)]


def raise_fd_limit(want: int = 65536) -> int:
    import resource

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    new = min(want, hard) if hard != resource.RLIM_INFINITY else want
    if new > soft:
        resource.setrlimit(resource.RLIMIT_NOFILE, (new, hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


# --- simulated engines -------------------------------------------------------------------


def start_sims(specs: list[list[str]]) -> list[SimProcess]:
    """Start one sim per argument list (in parallel), each on a port it picks itself."""
    procs = [SimProcess(args, start=False, timeout=30) for args in specs]
    started: list[SimProcess] = []
    try:
        for p in procs:
            p.start()
            started.append(p)
    except BaseException:
        for p in started:
            p.close()
        raise
    return procs


@contextlib.contextmanager
def sims(specs: list[list[str]]) -> Iterator[list[SimProcess]]:
    procs = start_sims(specs)
    try:
        yield procs
    finally:
        for p in procs:
            p.close()


# --- the gateway -------------------------------------------------------------------------


def wait_http(port: int, path: str = "/health", timeout: float = 30.0, proc: subprocess.Popen[bytes] | None = None,
              log: Path | None = None) -> None:
    deadline = time.monotonic() + timeout
    while True:
        if proc is not None and proc.poll() is not None:
            tail = log.read_text()[-3000:] if log and log.exists() else ""
            raise RuntimeError(f"process exited with {proc.returncode} before answering {path}\n{tail}")
        try:
            c = http.client.HTTPConnection("127.0.0.1", port, timeout=1.0)
            c.request("GET", path)
            if c.getresponse().status == 200:
                c.close()
                return
            c.close()
        except OSError:
            pass
        if time.monotonic() > deadline:
            raise TimeoutError(f"127.0.0.1:{port}{path} not ready in {timeout}s")
        time.sleep(0.02)


class Gateway:
    """The gateway as its own process: `gateway serve --config FILE --port P`, pinned.

    `launcher="cli"` runs the real command line; `launcher="bench"` runs
    benchmarks.launch (same app, with knobs for the tuning experiments).
    """

    def __init__(self, name: str, config_yaml: str, placement: Placement, launcher: str = "cli",
                 launch_args: list[str] | None = None, env: dict[str, str] | None = None) -> None:
        self.name = name
        self.port = free_port()
        self.dir = OUT / "run" / name
        self.dir.mkdir(parents=True, exist_ok=True)
        self.config_path = self.dir / "gateway.yaml"
        self.config_path.write_text(config_yaml)
        self.log_path = self.dir / "gateway.log"
        if launcher == "cli":
            argv = [str(ROOT / ".venv" / "bin" / "gateway") if (ROOT / ".venv/bin/gateway").exists() else "gateway",
                    "serve", "--config", str(self.config_path), "--port", str(self.port)]
        else:
            argv = [sys.executable, "-m", "benchmarks.launch", "--config", str(self.config_path),
                    "--port", str(self.port), *(launch_args or [])]
        self.argv = placement.gateway_prefix() + argv
        path = os.pathsep.join(x for x in (str(ROOT), os.environ.get("PYTHONPATH", "")) if x)
        self.env = {**os.environ, "PYTHONUNBUFFERED": "1", "PYTHONPATH": path, **(env or {})}
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def target(self) -> tuple[str, int]:
        return ("127.0.0.1", self.port)

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def start(self, timeout: float = 30.0) -> Gateway:
        with open(self.log_path, "wb") as log:
            self.proc = subprocess.Popen(self.argv, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                         cwd=self.dir, env=self.env, start_new_session=True)
        try:
            wait_http(self.port, "/health", timeout, self.proc, self.log_path)
        except BaseException:
            self.stop()
            raise
        return self

    def child_pids(self) -> list[int]:
        """Worker processes (multi-worker launches), found through /proc."""
        out = []
        for d in os.listdir("/proc"):
            if d.isdigit():
                try:
                    with open(f"/proc/{d}/stat") as f:
                        ppid = int(f.read().rsplit(")", 1)[1].split()[1])
                except OSError:
                    continue
                if ppid == self.pid:
                    out.append(int(d))
        return out

    def stop(self, timeout: float = 10.0) -> None:
        p = self.proc
        if p is None or p.poll() is not None:
            return
        try:
            os.kill(p.pid, signal.SIGTERM)
            p.wait(timeout)
        except subprocess.TimeoutExpired:
            os.kill(p.pid, signal.SIGKILL)
            p.wait()
        except ProcessLookupError:
            pass

    def log_tail(self, chars: int = 2000) -> str:
        try:
            return self.log_path.read_text()[-chars:]
        except OSError:
            return ""

    def __enter__(self) -> Gateway:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


# The key every benchmark client sends (harmless to engines and peers, which ignore it).
# Not a secret: it only ever opens a gateway on 127.0.0.1 started by the harness.
BENCH_KEY = "sk-bench-loopback-only-0123456789abcdef"


@dataclass(frozen=True)
class Subsystems:
    """What runs on the gateway's hot path besides proxying. The default is the production
    configuration (issue #13): an API key checked on every request, usage metered to
    SQLite, Prometheus metrics on. `python -m benchmarks.run --off ...` turns some off to
    show what each costs; the old benchmark ran with all three off and flattered us."""

    auth: bool = True
    metering: bool = True
    metrics: bool = True

    def headers(self) -> dict[str, str]:
        """Headers every client request carries (sent to peers and engines too, for the same bytes)."""
        return {"Authorization": f"Bearer {BENCH_KEY}"}

    def describe(self) -> str:
        if self.auth and self.metering and self.metrics:
            return "production: API key (`auth: keys`), metering to SQLite, Prometheus metrics"
        on = [n for n, v in (("API key", self.auth), ("metering to SQLite", self.metering),
                             ("metrics", self.metrics)) if v]
        off = [n for n, v in (("auth", self.auth), ("metering", self.metering), ("metrics", self.metrics)) if not v]
        return f"NOT production: {', '.join(off)} off" + (f"; on: {', '.join(on)}" if on else "")


PRODUCTION = Subsystems()
BARE = Subsystems(auth=False, metering=False, metrics=False)


def subsystems_gateway(name: str, pools: dict[str, dict[str, Any]], placement: Placement, subsystems: Subsystems,
                       store: str = "sqlite:///usage.db", launch_args: list[str] | None = None) -> Gateway:
    """A gateway with these subsystems: `gateway serve` when metrics are on (as shipped);
    metrics off needs benchmarks.launch (`--no-metrics`), as there is no setting for it."""
    yaml = gateway_yaml(pools, store if subsystems.metering else "memory://", subsystems.metering,
                        auth=subsystems.auth)
    args = list(launch_args or []) + ([] if subsystems.metrics else ["--no-metrics"])
    if subsystems.metering:
        (OUT / "run" / name / "usage.db").unlink(missing_ok=True)
    if not args:
        return Gateway(name, yaml, placement)
    return Gateway(name, yaml, placement, launcher="bench", launch_args=args)


def gateway_yaml(pools: dict[str, dict[str, Any]], store: str = "memory://", metering: bool = False,
                 extra: str = "", auth: bool = False) -> str:
    """A minimal config: the given pools (endpoints, balancer, max_concurrency...); with
    `auth`, one key (BENCH_KEY, no limits) as in production, else `auth: {mode: none}`."""
    import hashlib

    digest = hashlib.sha256(BENCH_KEY.encode()).hexdigest()
    auth_yaml = f"auth: {{mode: keys, keys: [{{name: bench, key_sha256: {digest}}}]}}" if auth else "auth: {mode: none}"
    lines = [auth_yaml, f'store: "{store}"', f"metering: {{enabled: {str(metering).lower()}}}",
             "server: {drain_seconds: 2}", "pools:"]
    for name, p in pools.items():
        lines.append(f"  {name}:")
        for k, v in p.items():
            if isinstance(v, list):
                v = "[" + ", ".join(str(x) for x in v) + "]"
            lines.append(f"    {k}: {v}")
    return "\n".join(lines) + "\n" + extra


# --- redis -------------------------------------------------------------------------------


class Redis:
    """A throwaway redis-server on a free loopback port, no persistence."""

    def __init__(self) -> None:
        self.port = free_port()
        self.proc: subprocess.Popen[bytes] | None = None

    @staticmethod
    def available() -> bool:
        return shutil.which("redis-server") is not None

    def start(self) -> Redis:
        self.proc = subprocess.Popen(
            ["redis-server", "--port", str(self.port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
             "--protected-mode", "yes"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, stdin=subprocess.DEVNULL, start_new_session=True)
        deadline = time.monotonic() + 10
        import socket

        while True:
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.5) as s:
                    s.sendall(b"PING\r\n")
                    if s.recv(16).startswith(b"+PONG"):
                        return self
            except OSError:
                pass
            if time.monotonic() > deadline or self.proc.poll() is not None:
                self.stop()
                raise RuntimeError("redis-server did not start")
            time.sleep(0.05)

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def stop(self) -> None:
        p = self.proc
        if p is not None and p.poll() is None:
            p.terminate()
            try:
                p.wait(5)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()

    def __enter__(self) -> Redis:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
