"""Engine output: a per-backend rotating log file plus an in-memory ring of the last lines.

The engine's stdout and stderr arrive on one pipe (`pump`). Lines go into the ring at once
(the admin API and start-up errors read it); bytes go to the file from a worker thread, so
a slow disk never blocks the event loop. Rotation is size-based: `name.log` ->
`name.log.1` -> ... -> `name.log.N`, like logging.handlers.RotatingFileHandler.
"""

from __future__ import annotations

import asyncio
import os
import re
import threading
import time
from collections import deque
from pathlib import Path

_UNSAFE = re.compile(r"[^A-Za-z0-9._-]+")


def log_file_name(backend_id: str) -> str:
    return _UNSAFE.sub("_", backend_id).strip("_") + ".log"


class EngineLog:
    def __init__(
        self, path: Path | None, max_bytes: int = 10 * 1024 * 1024, backups: int = 3, ring: int = 1000
    ):
        self.path = path
        self.max_bytes = max_bytes
        self.backups = backups
        self.ring: deque[str] = deque(maxlen=ring)
        self._partial = ""
        self._lock = threading.Lock()  # file writes come from worker threads

    # --- lines ---

    def tail(self, lines: int = 200) -> list[str]:
        if lines <= 0:
            return []
        return list(self.ring)[-lines:]

    async def note(self, text: str) -> None:
        """A line from the gateway itself (start, exit), marked so it is not taken for engine output."""
        line = f"[gateway {time.strftime('%Y-%m-%d %H:%M:%S')}] {text}"
        self.ring.append(line)
        await self._write((line + "\n").encode())

    def _take(self, data: str) -> None:
        text = self._partial + data
        *lines, self._partial = text.split("\n")
        if len(self._partial) > 65536:  # a line without end (a \r-only progress bar): cut it
            lines.append(self._partial)
            self._partial = ""
        for line in lines:
            # Progress bars redraw with \r: keep what the terminal would finally show.
            if "\r" in line:
                parts = [p for p in line.split("\r") if p.strip()]
                line = parts[-1] if parts else ""
            self.ring.append(line.rstrip())

    def flush_partial(self) -> None:
        if self._partial:
            self._take("\n")

    # --- pumping ---

    async def pump(self, stream: asyncio.StreamReader) -> None:
        """Copy a process's output into the ring and the file until EOF."""
        while True:
            chunk = await stream.read(65536)
            if not chunk:
                break
            self._take(chunk.decode("utf-8", errors="replace"))
            await self._write(chunk)
        self.flush_partial()

    # --- the file ---

    async def _write(self, data: bytes) -> None:
        if self.path is None:
            return
        await asyncio.to_thread(self._write_sync, data)

    def _write_sync(self, data: bytes) -> None:
        assert self.path is not None
        with self._lock:
            try:
                self.path.parent.mkdir(parents=True, exist_ok=True)
                if self.path.exists() and self.path.stat().st_size + len(data) > self.max_bytes:
                    self._rotate()
                with open(self.path, "ab") as f:
                    f.write(data)
            except OSError:
                # A full or read-only disk must not take the engine down; the ring still works.
                pass

    def _rotate(self) -> None:
        assert self.path is not None
        if self.backups <= 0:
            self.path.unlink(missing_ok=True)
            return
        for i in range(self.backups - 1, 0, -1):
            src = Path(f"{self.path}.{i}")
            if src.exists():
                os.replace(src, f"{self.path}.{i + 1}")
        os.replace(self.path, f"{self.path}.1")
