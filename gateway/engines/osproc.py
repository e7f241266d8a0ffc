"""OS-level helpers for engine processes: die-with-parent, process-group signals, exit text."""

from __future__ import annotations

import ctypes
import os
import signal
import sys
from collections.abc import Callable

PR_SET_PDEATHSIG = 1


def child_setup(parent_pid: int) -> Callable[[], None] | None:
    """A preexec_fn that makes the child get SIGKILL when the gateway dies (Linux).

    Built in the parent so the child only makes one syscall. The kernel sends the signal
    when the *thread* that forked exits, so spawn from the event loop's thread. If the
    gateway already died between fork and prctl, the child exits at once.
    """
    if not sys.platform.startswith("linux"):
        return None
    libc = ctypes.CDLL(None, use_errno=True)

    def setup() -> None:
        libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
        if os.getppid() != parent_pid:
            os._exit(1)

    return setup


def signal_group(pgid: int, sig: int) -> bool:
    """Signal a process group; False when it no longer exists (signal 0 = existence check)."""
    try:
        os.killpg(pgid, sig)
        return True
    except (ProcessLookupError, PermissionError):
        return False


def describe_exit(code: int | None) -> str:
    if code is not None and code < 0:
        try:
            return f"killed by {signal.Signals(-code).name}"
        except ValueError:
            return f"killed by signal {-code}"
    return f"exited with code {code}"
