"""Device sets for replicas: disjoint slices of `engines.gpus`, refused when exhausted.

Devices pinned by a spec's `devices:` are left out: on-demand engines share those and take
turns on them (engines/residency.py).

Device ids are strings as the inventory lists them ("0", "1", or "GPU-uuid"), handed out
in inventory order so a config's assignment is predictable (replica 0 of the first pool
gets the first devices).
"""

from __future__ import annotations


class GpusExhausted(Exception):
    pass


class GpuInventory:
    def __init__(self, devices: list[str]) -> None:
        if len(set(devices)) != len(devices):
            raise ValueError(f"duplicate device ids in inventory: {devices}")
        self.devices = list(devices)
        self._owner: dict[str, str] = {}  # device -> backend id
        # Devices named in specs' `devices:`: shared by on-demand engines, never allocated.
        self.pinned: frozenset[str] = frozenset()

    def pin(self, devices: frozenset[str]) -> None:
        self.pinned = devices

    @property
    def free(self) -> list[str]:
        return [d for d in self.devices if d not in self._owner and d not in self.pinned]

    def allocate(self, count: int, owner: str) -> tuple[str, ...]:
        """`count` free devices for `owner` (empty for count 0). Raises GpusExhausted."""
        if count <= 0:
            return ()
        free = self.free
        if count > len(free):
            raise GpusExhausted(
                f"{owner} needs {count} devices but only {len(free)} of {len(self.devices)} are free "
                f"({', '.join(free) or 'none'}); in use: "
                + (", ".join(f"{d}={o}" for d, o in self._owner.items()) or "none")
            )
        picked = tuple(free[:count])
        for d in picked:
            self._owner[d] = owner
        return picked

    def release(self, owner: str) -> None:
        for d in [d for d, o in self._owner.items() if o == owner]:
            del self._owner[d]

    def claim(self, devices: tuple[str, ...], owner: str) -> None:
        """Record devices already in use by a running engine (after an inventory change)."""
        for d in devices:
            self._owner[d] = owner
