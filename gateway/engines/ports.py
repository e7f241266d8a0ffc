"""Free TCP ports for engines, from `engines.port_range`, checked by binding.

A port is handed out only if (a) no engine of ours holds it and (b) binding 127.0.0.1 to
it succeeds right now. Between our check and the engine's own bind another program can
take it; the engine then exits at start-up and its restart asks for a port again.
The scan starts at a random offset so that several gateways (or test runs) on one host
rarely race for the same ports.
"""

from __future__ import annotations

import random
import socket


class PortsExhausted(Exception):
    pass


def port_is_free(port: int, host: str = "127.0.0.1") -> bool:
    # SO_REUSEADDR like the engines' own servers (uvicorn, llama.cpp): connections left in
    # TIME_WAIT by our health probes must not make a restarting engine's port look taken;
    # only a socket bound or listening there does.
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, port))
        except OSError:
            return False
    return True


class PortAllocator:
    def __init__(self, low: int, high: int, rng: random.Random | None = None) -> None:
        if not 0 < low <= high <= 65535:
            raise ValueError(f"bad port range {low}..{high}")
        self.low, self.high = low, high
        self._held: set[int] = set()
        self._rng = rng or random.Random()
        self._next = self._rng.randint(low, high)

    @property
    def held(self) -> frozenset[int]:
        return frozenset(self._held)

    def allocate(self) -> int:
        """A port not held by us and bindable now. Raises PortsExhausted."""
        span = self.high - self.low + 1
        for i in range(span):
            port = self.low + (self._next - self.low + i) % span
            if port in self._held or not port_is_free(port):
                continue
            self._held.add(port)
            self._next = self.low + (port - self.low + 1) % span
            return port
        raise PortsExhausted(f"no free port in {self.low}..{self.high}")

    def renew(self, port: int) -> int:
        """Keep `port` if it is still free (an engine restarting on the same URL), else a new one."""
        if port in self._held and port_is_free(port):
            return port
        self.release(port)
        return self.allocate()

    def hold(self, port: int) -> None:
        """Record a port already in use by a running engine (after a range change)."""
        self._held.add(port)

    def release(self, port: int) -> None:
        self._held.discard(port)
