"""Simulated GPU memory shared by the simulators of one machine: a ledger of claims per device.

Layout: `<device-dir>/gpu<N>.json` holds `{"claims": [{"pid", "start", "bytes", "model"}]}` for
device N, read and rewritten under an exclusive `fcntl.flock` on `<device-dir>/gpu<N>.lock`.
A claim counts only while its process lives: a claim whose pid is gone, is a zombie, or was
reused by a process with another start time is ignored (and dropped on the next write), so a
SIGKILLed simulator never leaks a device. Several devices are locked in sorted order, so two
simulators claiming overlapping sets cannot deadlock, and a claim is all-or-nothing.

All of this is blocking file I/O of a few hundred bytes; callers on the event loop run it via
`asyncio.to_thread` (a flock may wait on another process's critical section).
"""

from __future__ import annotations

import fcntl
import json
import os
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

GIB = 1024**3


class DeviceOutOfMemory(Exception):
    """A claim does not fit; the message reads like vLLM's CUDA out-of-memory errors."""


@dataclass(frozen=True)
class Claim:
    pid: int
    start: int  # process start time (clock ticks since boot): detects pid reuse
    bytes: int
    model: str


def process_start(pid: int) -> int | None:
    """Start time of a live, non-zombie process, or None if it is gone."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = stat[stat.rindex(")") + 2:].split()  # after "pid (comm) "
    if fields[0] in ("Z", "X"):
        return None
    return int(fields[19])  # field 22 of proc(5), counted from the state field (3)


def _alive(c: Claim) -> bool:
    return process_start(c.pid) == c.start


class DeviceLedger:
    def __init__(self, directory: Path, devices: list[str], capacity_bytes: int, model: str) -> None:
        self.directory = directory
        self.devices = sorted(devices, key=lambda d: (len(d), d))
        self.capacity = capacity_bytes
        self.model = model
        self.pid = os.getpid()
        start = process_start(self.pid)
        self.start = start if start is not None else 0

    @contextmanager
    def _locked(self) -> Iterator[None]:
        self.directory.mkdir(parents=True, exist_ok=True)
        with ExitStack() as stack:
            for dev in self.devices:
                fd = os.open(self.directory / f"gpu{dev}.lock", os.O_RDWR | os.O_CREAT, 0o666)
                stack.callback(os.close, fd)
                fcntl.flock(fd, fcntl.LOCK_EX)
                stack.callback(fcntl.flock, fd, fcntl.LOCK_UN)
            yield

    def _read(self, dev: str) -> list[Claim]:
        try:
            data = json.loads((self.directory / f"gpu{dev}.json").read_text() or "{}")
        except (OSError, ValueError):
            return []
        return [Claim(int(c["pid"]), int(c["start"]), int(c["bytes"]), str(c.get("model", "")))
                for c in data.get("claims", [])]

    def _write(self, dev: str, claims: list[Claim]) -> None:
        path = self.directory / f"gpu{dev}.json"
        tmp = path.with_suffix(f".{self.pid}.tmp")
        tmp.write_text(json.dumps({"claims": [c.__dict__ for c in claims]}))
        os.replace(tmp, path)  # readers never see a half-written file

    def set_claim(self, per_device_bytes: int) -> None:
        """Make this process's claim `per_device_bytes` on each of its devices (0 = release).

        Raises DeviceOutOfMemory, leaving every device as it was, if it does not fit."""
        with self._locked():
            others: dict[str, list[Claim]] = {}
            for dev in self.devices:
                live = [c for c in self._read(dev) if c.pid != self.pid and _alive(c)]
                used = sum(c.bytes for c in live)
                if per_device_bytes > 0 and used + per_device_bytes > self.capacity:
                    free = self.capacity - used
                    raise DeviceOutOfMemory(
                        f"CUDA out of memory. Tried to allocate {per_device_bytes / GIB:.2f} GiB. GPU {dev} has a "
                        f"total capacity of {self.capacity / GIB:.2f} GiB of which {max(0, free) / GIB:.2f} GiB is "
                        f"free. Claims: {', '.join(f'pid {c.pid} ({c.model}) {c.bytes / GIB:.2f} GiB' for c in live)}")
                others[dev] = live
            for dev, live in others.items():
                mine = [Claim(self.pid, self.start, per_device_bytes, self.model)] if per_device_bytes > 0 else []
                self._write(dev, live + mine)

    def snapshot(self) -> dict[str, Any]:
        """Live claims per device (for /sim/state)."""
        with self._locked():
            return {dev: {"capacity_bytes": self.capacity,
                          "claims": [c.__dict__ for c in self._read(dev) if _alive(c)]}
                    for dev in self.devices}


def visible_devices(env: dict[str, str]) -> list[str]:
    """CUDA_VISIBLE_DEVICES as the gateway sets it ("0", "2,3"); unset or empty means device 0."""
    raw = env.get("CUDA_VISIBLE_DEVICES", "").strip()
    devices = [d.strip() for d in raw.split(",") if d.strip()]
    return devices or ["0"]
