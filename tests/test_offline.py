"""The gateway meters with no network at all: tiktoken's tables ship inside the package.

tiktoken downloads its BPE tables on first use unless they are cached; our GPU hosts are
often air-gapped. The check runs in a fresh process whose sockets cannot reach anything
(a new network namespace where the machine allows one, else every connect refused) and
with an empty tiktoken cache, so a download attempt would fail loudly.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

SCRIPT = r"""
import socket, sys

def refuse(*a, **k):
    raise OSError("network disabled for this test")

socket.socket.connect = refuse
socket.create_connection = refuse
socket.getaddrinfo = refuse

from gateway import tokens
from gateway.metering import estimate

assert tokens.count_text(" the model data") == 3, tokens.encode(" the model data")
events = [b'data: {"choices":[{"index":0,"delta":{"content":" the"}}]}\n\n',
          b'data: {"choices":[{"index":0,"delta":{"content":" model"}}]}\n\n']
started, n = estimate.completion(events)
assert started and n == 2, n
assert estimate.prompt_tokens("chat", {"messages": [{"role": "user", "content": "hello world"}]}) > 0
print("offline-ok")
"""


def _run(cmd: list[str], tmp: Path) -> subprocess.CompletedProcess[str]:
    env = {"PATH": "/usr/bin:/bin", "TIKTOKEN_CACHE_DIR": str(tmp / "empty-cache"), "HOME": str(tmp)}
    return subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=60, cwd=Path(__file__).parents[1])


def test_tokenizer_and_estimates_work_without_network(tmp_path: Path) -> None:
    (tmp_path / "empty-cache").mkdir()
    cmd = [sys.executable, "-c", SCRIPT]
    unshare = shutil.which("unshare")
    if unshare and subprocess.run([unshare, "-n", "true"], capture_output=True).returncode == 0:
        cmd = [unshare, "-n", *cmd]  # a namespace with no interfaces but loopback (down)
    r = _run(cmd, tmp_path)
    assert r.returncode == 0 and "offline-ok" in r.stdout, r.stderr
    assert not any((tmp_path / "empty-cache").iterdir())  # nothing fetched or cached
