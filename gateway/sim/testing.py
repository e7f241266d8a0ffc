"""Helpers for tests and benchmarks that need a real simulated engine process.

    from gateway.sim.testing import SimProcess

    with SimProcess(["--served-model-name", "m", "--ttft-ms", "5"]) as sim:
        client = OpenAI(base_url=sim.base_url, api_key="x")
        ...
        assert sim.metrics()["vllm:num_requests_running"] == 0

The process is started with `--port 0` unless a port is given and reports the port it
bound (no race on a pre-picked free port). Readiness is awaited by polling /health,
never by sleeping a fixed time. stop() signals the PID (SIGTERM, then SIGKILL).
"""

from __future__ import annotations

import http.client
import json
import os
import re
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from types import TracebackType
from typing import Any

from gateway.sim.metrics import parse_prometheus

_LISTEN_RE = re.compile(r"gateway\.sim: listening on http://[^:\s]+:(\d+)")


def free_port() -> int:
    """A TCP port that was free a moment ago on 127.0.0.1 (prefer SimProcess's --port 0)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class SimStartError(RuntimeError):
    pass


class SimProcess:
    """A `python -m gateway.sim` subprocess in its own process group, logging to a temp file."""

    def __init__(self, args: list[str] | None = None, port: int | None = None, *, wait_ready: bool = True,
                 timeout: float = 15.0, start: bool = True, env: dict[str, str] | None = None) -> None:
        self.args = list(args or [])
        self.env = dict(env or {})  # added to the inherited environment (e.g. VLLM_SERVER_DEV_MODE)
        if "--port" in self.args:
            raise ValueError("pass the port as SimProcess(port=...), not in args")
        self._requested_port = port
        self.port: int = port or 0
        self.wait_ready = wait_ready
        self.timeout = timeout
        self.proc: subprocess.Popen[bytes] | None = None
        fd, name = tempfile.mkstemp(prefix="gateway-sim-", suffix=".log")
        os.close(fd)
        self.log_path = Path(name)
        if start:
            self.start()

    # ---- lifecycle ------------------------------------------------------------------
    def start(self) -> SimProcess:
        cmd = [sys.executable, "-m", "gateway.sim", "--port", str(self._requested_port or 0), *self.args]
        with open(self.log_path, "wb") as log:
            self.proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                         start_new_session=True, env={**os.environ, "PYTHONUNBUFFERED": "1", **self.env})
        try:
            deadline = time.monotonic() + self.timeout
            self._wait_listening(deadline)
            if self.wait_ready:
                self.wait_until_ready(deadline - time.monotonic())
        except BaseException:
            self.close()  # the error message already carries the log tail
            raise
        return self

    def _wait_listening(self, deadline: float) -> None:
        while True:
            m = _LISTEN_RE.search(self.log_tail(4000))
            if m:
                self.port = int(m.group(1))
                return
            self._check_alive("before listening")
            if time.monotonic() > deadline:
                raise SimStartError(f"sim did not start listening in {self.timeout}s\n{self.log_tail()}")
            time.sleep(0.02)

    def wait_until_ready(self, timeout: float | None = None) -> None:
        """Poll GET /health until 200 (it answers 503 during --startup-seconds)."""
        deadline = time.monotonic() + (self.timeout if timeout is None else timeout)
        while True:
            self._check_alive("before becoming ready")
            try:
                if self.request("GET", "/health", timeout=1.0)[0] == 200:
                    return
            except OSError:
                pass
            if time.monotonic() > deadline:
                raise SimStartError(f"sim not ready within the timeout\n{self.log_tail()}")
            time.sleep(0.02)

    def _check_alive(self, when: str) -> None:
        if self.proc is not None and self.proc.poll() is not None:
            raise SimStartError(f"sim exited with {self.proc.returncode} {when}\n{self.log_tail()}")

    def stop(self, timeout: float = 5.0) -> int | None:
        """SIGTERM, then SIGKILL after `timeout`; returns the exit status. Idempotent."""
        proc = self.proc
        if proc is None:
            return None
        if proc.poll() is None:
            try:
                os.kill(proc.pid, signal.SIGTERM)
                proc.wait(timeout)
            except subprocess.TimeoutExpired:
                os.kill(proc.pid, signal.SIGKILL)
                proc.wait()
            except ProcessLookupError:
                proc.wait()
        return proc.returncode

    def close(self) -> None:
        self.stop()
        self.log_path.unlink(missing_ok=True)

    def __enter__(self) -> SimProcess:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()

    # ---- introspection ---------------------------------------------------------------
    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    @property
    def root_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def base_url(self) -> str:
        """OpenAI-style base URL, e.g. for OpenAI(base_url=sim.base_url, api_key="x")."""
        return f"{self.root_url}/v1"

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def wait_exit(self, timeout: float = 5.0) -> int:
        """Wait for the process to exit by itself (e.g. an injected crash); returns its status."""
        assert self.proc is not None
        return self.proc.wait(timeout)

    def log_tail(self, chars: int = 3000) -> str:
        try:
            data = self.log_path.read_bytes()
        except OSError:
            return ""
        return data[-chars:].decode("utf-8", "replace")

    def request(self, method: str, path: str, body: Any = None, headers: dict[str, str] | None = None,
                timeout: float = 10.0) -> tuple[int, bytes]:
        """A small blocking HTTP request to the sim (one connection, closed afterwards)."""
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=timeout)
        try:
            payload = None if body is None else (body if isinstance(body, bytes) else json.dumps(body).encode())
            hdrs = {"Content-Type": "application/json", **(headers or {})}
            conn.request(method, path, body=payload, headers=hdrs)
            resp = conn.getresponse()
            return resp.status, resp.read()
        finally:
            conn.close()

    def open_stream(self, path: str, body: Any, headers: dict[str, str] | None = None,
                    timeout: float = 10.0) -> tuple[http.client.HTTPConnection, http.client.HTTPResponse]:
        """POST and return the open connection and response, for reading SSE incrementally
        with iter_sse(); close the connection to simulate a client disconnect."""
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=timeout)
        conn.request("POST", path, body=json.dumps(body).encode(),
                     headers={"Content-Type": "application/json", **(headers or {})})
        return conn, conn.getresponse()

    def stream(self, path: str, body: Any, headers: dict[str, str] | None = None,
               timeout: float = 10.0) -> list[Any]:
        """POST a streaming request; the parsed JSON of every `data:` event, then "[DONE]"."""
        conn, resp = self.open_stream(path, body, headers, timeout)
        try:
            if resp.status != 200:
                raise RuntimeError(f"{path} answered {resp.status}: {resp.read()!r}")
            return [e if e == "[DONE]" else json.loads(e) for e in iter_sse(resp)]
        finally:
            conn.close()

    def metrics(self) -> dict[str, float]:
        """Parsed /metrics: {"vllm:num_requests_running": 0.0, ...} (bare names summed over label
        sets) plus exact series keys such as 'vllm:request_success_total{...,finished_reason="stop"}'."""
        status, body = self.request("GET", "/metrics")
        if status != 200:
            raise RuntimeError(f"/metrics answered {status}")
        return parse_prometheus(body.decode())

    def state(self) -> dict[str, Any]:
        status, body = self.request("GET", "/sim/state")
        if status != 200:
            raise RuntimeError(f"/sim/state answered {status}")
        result: dict[str, Any] = json.loads(body)
        return result

    def set_faults(self, **faults: Any) -> dict[str, Any]:
        """Patch runtime faults, e.g. set_faults(error_rate=1.0, error_status=503)."""
        status, body = self.request("POST", "/sim/faults", faults)
        if status != 200:
            raise ValueError(body.decode())
        result: dict[str, Any] = json.loads(body)
        return result

    def wait_for(self, predicate: Any, timeout: float = 5.0, interval: float = 0.01) -> float:
        """Poll metrics() until predicate(metrics) is true; returns the seconds it took."""
        start = time.monotonic()
        last: dict[str, float] = {}
        while time.monotonic() - start < timeout:
            last = self.metrics()
            if predicate(last):
                return time.monotonic() - start
            time.sleep(interval)
        raise TimeoutError(f"condition not met within {timeout}s; last metrics: "
                           f"{ {k: v for k, v in last.items() if '{' not in k} }")


def iter_sse(resp: http.client.HTTPResponse) -> Iterator[str]:
    """Yield the payload of each `data:` line of an SSE response as it arrives (until EOF)."""
    while True:
        line = resp.readline()
        if not line:
            return
        line = line.rstrip(b"\r\n")
        if line.startswith(b"data:"):
            yield line[5:].strip().decode()
