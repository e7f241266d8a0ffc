"""The gateway as a black box: its `gateway serve` process, a YAML config, HTTP.

The real-engine tier never imports gateway internals: the gateway spawns the engines
through its own launchers from the config below, and tests see only what a user sees
(the OpenAI API, /admin, /metrics, and the engines' own /metrics on the ports /admin
reports).
"""

from __future__ import annotations

import hashlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import yaml

CLIENT_KEY = "sk-real-client"
# A key allowed on the embedding pools only: every other model must look absent to it.
EMBED_ONLY_KEY = "sk-real-embed-only"
ADMIN_KEY = "sk-real-admin"
ENV_FILE = Path(os.environ.get("GATEWAY_CACHE", Path.home() / ".cache" / "gateway")) / "realengines.env"
REPO = Path(__file__).resolve().parents[2]

# What vLLM's CPU build needs to start well on our machines (see docs/realengines/).
VLLM_ENV = {
    "VLLM_CPU_KVCACHE_SPACE": "1",
    "OMP_NUM_THREADS": "1",
    "HF_HUB_OFFLINE": "1",
    "TRANSFORMERS_OFFLINE": "1",
    "VLLM_NO_USAGE_STATS": "1",
}


@dataclass(frozen=True)
class RealEngines:
    """Paths written by scripts/realengines/setup.sh."""

    vllm: str
    vllm_python: str
    llama_server: str
    model_hf: str
    model_gguf: str
    expect: dict[str, Any]
    # The tiny Whisper (make_tiny_whisper.py); None in an env file from before it existed.
    whisper_hf: str | None = None
    whisper_expect: dict[str, Any] | None = None

    @classmethod
    def load(cls, env_file: Path = ENV_FILE) -> RealEngines:
        values = dict(
            line.split("=", 1) for line in env_file.read_text().splitlines() if "=" in line
        )
        return cls(
            vllm=values["REALENGINES_VLLM"],
            vllm_python=values["REALENGINES_VLLM_PYTHON"],
            llama_server=values["REALENGINES_LLAMA_SERVER"],
            model_hf=values["REALENGINES_MODEL_HF"],
            model_gguf=values["REALENGINES_MODEL_GGUF"],
            expect=json.loads(Path(values["REALENGINES_MODEL_EXPECT"]).read_text()),
            whisper_hf=values.get("REALENGINES_WHISPER_HF"),
            whisper_expect=(
                json.loads(Path(values["REALENGINES_WHISPER_EXPECT"]).read_text())
                if "REALENGINES_WHISPER_EXPECT" in values
                else None
            ),
        )


def ensure_installed(timeout: float = 3600) -> RealEngines:
    """Run the project's own installer (seconds when warm) and read what it produced.

    REALENGINES_SKIP_SETUP=1 uses the env file as it is (a setup already running elsewhere).
    """
    if os.environ.get("REALENGINES_SKIP_SETUP") == "1":
        return RealEngines.load()
    script = REPO / "scripts" / "realengines" / "setup.sh"
    proc = subprocess.run(["bash", str(script)], capture_output=True, text=True, timeout=timeout)
    if proc.returncode != 0:
        raise RuntimeError(f"scripts/realengines/setup.sh failed:\n{proc.stderr[-4000:]}")
    return RealEngines.load()


def sha(s: str) -> str:
    return hashlib.sha256(s.encode()).hexdigest()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_for(pred: Callable[[], bool], timeout: float, interval: float = 0.05) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if pred():
            return True
        time.sleep(interval)
    return pred()


# `--dtype float32`: on a CPU with AMX, vLLM 0.32's CPU build runs bf16 models (its default
# for this float32 model) through its AMX attention kernel without asking the kernel for
# AMX permission, and the worker dies of SIGILL (exit -4) on the first request. float32
# takes the AVX-512/AVX2 kernel on every x86 CPU; the tiny model is float32 anyway.
VLLM_CPU_ARGS = ["--enforce-eager", "--dtype", "float32"]


def vllm_pool(engines: RealEngines, args: list[str], **extra: Any) -> dict[str, Any]:
    return {
        "engine": "vllm",
        "command": [engines.vllm, "serve"],
        "model": engines.model_hf,
        "env": dict(VLLM_ENV),
        "args": [*VLLM_CPU_ARGS, "--max-model-len", "16384", "--max-num-seqs", "8", *args],
        "startup_timeout": 900,
        "health": {"interval": 1, "metrics_interval": 0.5},
        **extra,
    }


def llamacpp_pool(engines: RealEngines, args: list[str], **extra: Any) -> dict[str, Any]:
    return {
        "engine": "llamacpp",
        "command": [engines.llama_server],
        "model": engines.model_gguf,
        "args": ["--threads", "1", "--ctx-size", "65536", *args],
        "startup_timeout": 120,
        "health": {"interval": 1, "metrics_interval": 0.5},
        **extra,
    }


class Gateway:
    """`gateway serve` in its own process group, on a free loopback port."""

    def __init__(self, workdir: Path, pools: dict[str, Any]) -> None:
        self.workdir = workdir
        self.port = free_port()
        self.config_path = workdir / "gateway.yaml"
        self.log_path = workdir / "gateway.log"
        self.pools = pools
        self.proc: subprocess.Popen[bytes] | None = None
        self.write_config(pools)

    def config(self, pools: dict[str, Any]) -> dict[str, Any]:
        return {
            # The default relay bound: tests whose client must outlast a fast engine keep
            # reading in a thread (a client that reads slowly is waited for, but one that
            # pauses falls ~0.8 MB behind the tiny model within seconds, and reading
            # nothing for the backlog timeout (1 s) then, it is cut as a non-reader).
            "server": {"host": "127.0.0.1", "port": self.port, "drain_seconds": 5},
            "store": f"sqlite:///{self.workdir / 'usage.db'}",
            "auth": {
                "admin_key_sha256": sha(ADMIN_KEY),
                "keys": [
                    {"name": "client", "key_sha256": sha(CLIENT_KEY), "models": ["*"]},
                    {"name": "embed-only", "key_sha256": sha(EMBED_ONLY_KEY), "models": ["vllm-embed", "llama-embed"]},
                ],
            },
            "metering": {"enabled": True, "flush_interval": 0.2},
            "engines": {
                "log_dir": str(self.workdir / "engine-logs"),
                "stop_grace_seconds": 10,
                "restart_backoff_initial": 1,
            },
            "pools": pools,
        }

    def write_config(self, pools: dict[str, Any]) -> None:
        self.pools = pools
        tmp = self.config_path.with_suffix(".tmp")
        tmp.write_text(yaml.safe_dump(self.config(pools), sort_keys=False))
        tmp.replace(self.config_path)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def base_url(self) -> str:
        return self.url + "/v1"

    def start(self, ready_timeout: float = 900, wait_ready: bool = True) -> Gateway:
        exe = Path(sys.executable).with_name("gateway")
        log = self.log_path.open("ab")
        self.proc = subprocess.Popen(
            [str(exe), "serve", "--config", str(self.config_path)],
            stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
            start_new_session=True, cwd=self.workdir,
        )
        log.close()
        if not wait_for(self._up, 30):
            self.stop()
            raise RuntimeError(f"gateway did not start:\n{self.tail()}")
        if wait_ready:
            self.wait_ready(ready_timeout)
        return self

    def _up(self) -> bool:
        assert self.proc is not None
        if self.proc.poll() is not None:
            raise RuntimeError(f"gateway exited with {self.proc.returncode}:\n{self.tail()}")
        try:
            return httpx.get(self.url + "/health", timeout=1).status_code == 200
        except httpx.HTTPError:
            return False

    def tail(self, n: int = 60) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-n:])
        except OSError:
            return ""

    def admin(self, method: str, path: str, **kw: Any) -> httpx.Response:
        return httpx.request(
            method, self.url + "/admin" + path,
            headers={"Authorization": f"Bearer {ADMIN_KEY}"}, timeout=30, **kw,
        )

    def backends(self) -> list[dict[str, Any]]:
        r = self.admin("GET", "/backends")
        r.raise_for_status()
        rows: list[dict[str, Any]] = r.json()["data"]
        return rows

    def backend(self, pool: str) -> dict[str, Any]:
        rows = [b for b in self.backends() if b["pool"] == pool]
        assert len(rows) == 1, rows
        return rows[0]

    def wait_ready(self, timeout: float, expected: int | None = None) -> None:
        def ready() -> bool:
            self._up()
            rows = self.backends()
            want = expected if expected is not None else len(rows)
            return len(rows) >= want and sum(r["state"] == "ready" for r in rows) >= want

        if not wait_for(ready, timeout, 0.5):
            raise RuntimeError(f"engines not ready after {timeout} s: {self.backends()}\n{self.tail()}")

    def engine_url(self, pool: str) -> str:
        return f"http://127.0.0.1:{self.backend(pool)['port']}"

    def engine_urls(self, pool: str) -> dict[str, str]:
        """{backend id: engine root URL} of every replica of `pool` that has a port."""
        return {b["id"]: f"http://127.0.0.1:{b['port']}" for b in self.backends() if b["pool"] == pool and b["port"]}

    def usage(self, group_by: str = "pool") -> dict[str, dict[str, Any]]:
        r = self.admin("GET", "/usage", params={"group_by": group_by, "since": "30d"})
        r.raise_for_status()
        return {row[group_by]: row for row in r.json()["data"]}

    def stop(self) -> None:
        if self.proc is None:
            return
        pids = []
        try:
            pids = [b["pid"] for b in self.backends() if b.get("pid")]
        except (httpx.HTTPError, RuntimeError):
            pass
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(60)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        # The gateway stops its engines; make sure of it (by pid, never by name).
        for pid in pids:
            with _suppress_lookup():
                os.kill(pid, 0)
                os.killpg(pid, signal.SIGKILL)
        self.proc = None


@contextmanager
def _suppress_lookup() -> Iterator[None]:
    try:
        yield
    except (ProcessLookupError, PermissionError):
        pass


def engine_metrics(url: str) -> dict[str, float]:
    """The engine's own /metrics, summed over labels: {series name: value}."""
    # Generous: an idle vLLM's API server, sharing two cores with a busy one, once took
    # more than 10 s to answer.
    text = httpx.get(url + "/metrics", timeout=60).text
    out: dict[str, float] = {}
    for line in text.splitlines():
        if not line or line.startswith("#"):
            continue
        name_labels, _, value = line.rpartition(" ")
        name = name_labels.split("{", 1)[0]
        try:
            out[name] = out.get(name, 0.0) + float(value)
        except ValueError:
            continue
    return out
