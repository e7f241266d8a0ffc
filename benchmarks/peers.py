"""The peers the gateway is measured beside (issue #13): vllm-router, sglang-router, nginx.

Installed by `scripts/bench-peers.sh` outside the clone (routers in their own venv under
`~/.cache/gateway/bench-peers/`, nginx from Debian's nginx-light). Each runs as its own
process on 127.0.0.1, pinned like the gateway (`taskset`, the same CPU), in front of one
simulated engine, and is stopped by its PID. CPU is read over the whole process tree
(every thread of the routers' tokio runtimes; nginx's master and worker).

Settings, chosen to be the cheapest comparable setup for one engine:
- routers: `--policy round_robin` (their default `cache_aware` keeps a radix tree of
  prompts), Prometheus on (a port of its own, like our metrics), log level warn (no line
  per request, like our gateway with its access log off), retries and circuit breaker left
  at their defaults (ours are on too). Both probe the engine's `/health`.
- nginx: one worker, `proxy_buffering off` (SSE passes through as it comes), upstream
  keep-alive (`keepalive 64`, HTTP/1.1, `Connection: ""`), access log off.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
from dataclasses import dataclass
from pathlib import Path

from gateway.sim.testing import free_port

from .procs import OUT, Placement, wait_http

PEERS_DIR = Path(os.environ.get("GATEWAY_BENCH_PEERS", Path.home() / ".cache" / "gateway" / "bench-peers"))
VENV_BIN = PEERS_DIR / "venv" / "bin"
INSTALL_HINT = "run ./scripts/bench-peers.sh to install the peers"


def nginx_binary() -> str | None:
    return shutil.which("nginx") or ("/usr/sbin/nginx" if os.access("/usr/sbin/nginx", os.X_OK) else None)


def tree_pids(pid: int) -> list[int]:
    """`pid` and all its descendants (from /proc), parents first."""
    children: dict[int, list[int]] = {}
    for d in os.listdir("/proc"):
        if not d.isdigit():
            continue
        try:
            with open(f"/proc/{d}/stat") as f:
                ppid = int(f.read().rsplit(")", 1)[1].split()[1])
        except (OSError, ValueError, IndexError):
            continue
        children.setdefault(ppid, []).append(int(d))
    out, todo = [], [pid]
    while todo:
        p = todo.pop(0)
        out.append(p)
        todo.extend(sorted(children.get(p, [])))
    return out


@dataclass
class Peer:
    """One proxy process in front of a simulated engine on 127.0.0.1."""

    name: str
    argv: list[str]
    port: int
    ready_path: str
    version: str
    config: Path | None = None
    proc: subprocess.Popen[bytes] | None = None

    @property
    def target(self) -> tuple[str, int]:
        return ("127.0.0.1", self.port)

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def pids(self) -> list[int]:
        """The process tree whose CPU counts as this peer's (read once it is up)."""
        return tree_pids(self.pid)

    def start(self, placement: Placement, timeout: float = 60.0) -> Peer:
        d = OUT / "run" / self.name
        d.mkdir(parents=True, exist_ok=True)
        log = d / "peer.log"
        with open(log, "wb") as f:
            self.proc = subprocess.Popen(placement.gateway_prefix() + self.argv, stdout=f, stderr=subprocess.STDOUT,
                                         stdin=subprocess.DEVNULL, cwd=d, start_new_session=True)
        try:
            wait_http(self.port, self.ready_path, timeout, self.proc, log)
        except BaseException:
            self.stop()
            raise
        return self

    def stop(self, timeout: float = 10.0) -> None:
        p = self.proc
        if p is None or p.poll() is not None:
            return
        # SIGTERM to the leader only; nginx's master stops its own worker.
        try:
            os.kill(p.pid, signal.SIGTERM)
            p.wait(timeout)
        except subprocess.TimeoutExpired:
            for pid in reversed(tree_pids(p.pid)):
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
            p.wait()
        except ProcessLookupError:
            pass


def _router_version(package: str) -> str:
    py = VENV_BIN / "python"
    try:
        out = subprocess.run([str(py), "-m", "pip", "show", package], capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    for line in out.stdout.splitlines():
        if line.startswith("Version:"):
            return line.split(":", 1)[1].strip()
    return "unknown"


def vllm_router(engine_port: int) -> Peer | str:
    exe = VENV_BIN / "vllm-router"
    if not exe.exists():
        return f"vllm-router is not installed ({INSTALL_HINT})"
    port = free_port()
    argv = [str(exe), "--host", "127.0.0.1", "--port", str(port), "--worker-urls", f"http://127.0.0.1:{engine_port}",
            "--policy", "round_robin", "--prometheus-host", "127.0.0.1", "--prometheus-port", str(free_port()),
            "--worker-startup-check-interval", "1", "--log-level", "warning"]
    return Peer("peer-vllm-router", argv, port, "/health", _router_version("vllm-router"))


def sglang_router(engine_port: int) -> Peer | str:
    exe = VENV_BIN / "sglang-router"
    if not exe.exists():
        return f"sglang-router is not installed ({INSTALL_HINT})"
    port = free_port()
    argv = [str(exe), "launch", "--host", "127.0.0.1", "--port", str(port), "--worker-urls", f"http://127.0.0.1:{engine_port}",
            "--policy", "round_robin", "--prometheus-host", "127.0.0.1", "--prometheus-port", str(free_port()),
            "--worker-startup-check-interval", "1", "--log-level", "warn"]
    return Peer("peer-sglang-router", argv, port, "/readiness", _router_version("sglang-router"))


NGINX_CONF = """\
worker_processes 1;
daemon off;
pid {dir}/nginx.pid;
error_log {dir}/error.log warn;
events {{ worker_connections 8192; }}
http {{
    access_log off;
    client_body_temp_path {dir}/body;
    proxy_temp_path {dir}/proxy;
    fastcgi_temp_path {dir}/fastcgi;
    uwsgi_temp_path {dir}/uwsgi;
    scgi_temp_path {dir}/scgi;
    keepalive_requests 1000000;
    upstream engine {{
        server {upstream};
        keepalive 64;
        keepalive_requests 1000000;
    }}
    server {{
        listen 127.0.0.1:{port} backlog=4096;
        location / {{
            proxy_pass http://engine;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_buffering off;
            proxy_request_buffering off;
            proxy_read_timeout 600s;
        }}
    }}
}}
"""


def nginx(engine_port: int) -> Peer | str:
    exe = nginx_binary()
    if exe is None:
        return f"nginx is not installed ({INSTALL_HINT})"
    port = free_port()
    d = OUT / "run" / "peer-nginx"
    d.mkdir(parents=True, exist_ok=True)
    conf = d / "nginx.conf"
    conf.write_text(NGINX_CONF.format(dir=d, port=port, upstream=f"127.0.0.1:{engine_port}"))
    version = subprocess.run([exe, "-v"], capture_output=True, text=True).stderr.strip().split("/")[-1]
    # -e: nginx >= 1.19.5 opens the default error log before reading the config; point it here.
    argv = [exe, "-p", str(d), "-c", str(conf), "-e", str(d / "error.log")]
    return Peer("peer-nginx", argv, port, "/health", version, config=conf)


FACTORIES = {"vllm-router": vllm_router, "sglang-router": sglang_router, "nginx": nginx}

PYTHON_FLOOR = "python floor"


def python_floor(engine_port: int) -> Peer:
    """benchmarks/floorproxy.py: what any Python proxy on our stack costs at least."""
    import sys

    port = free_port()
    script = Path(__file__).with_name("floorproxy.py")  # imports nothing of ours: runs from any cwd
    argv = [sys.executable, str(script), "--port", str(port), "--upstream", f"127.0.0.1:{engine_port}"]
    return Peer("peer-python-floor", argv, port, "/health", "this commit")
