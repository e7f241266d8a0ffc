"""Dynamic keys on every replica: load them from the shared store, poll for changes.

Every replica polls the store's version every `POLL_S` seconds (one GET or one tiny
SELECT) and reloads all keys when it changed, so a key created or revoked on one
replica works or stops working on all of them within about a second.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from typing import TYPE_CHECKING

from .auth import KeyRing
from .record import KeyRecord
from .store import KeyStore, open_key_store

if TYPE_CHECKING:
    from ..config import GatewayConfig

log = logging.getLogger("gateway.keystore")

POLL_S = 1.0


class KeySync:
    """Keeps `keyring` in sync with the shared key store: loads every key, then polls."""

    def __init__(self, store: KeyStore, keyring: KeyRing, poll_s: float = POLL_S) -> None:
        self.store = store
        self.keyring = keyring
        self.poll_s = poll_s
        self.records: dict[str, KeyRecord] = {}
        self._version = -1
        self._applied: dict[str, str] = {}  # name -> digest currently in the keyring
        self._task: asyncio.Task[None] | None = None
        self._lock = asyncio.Lock()

    @classmethod
    async def start(cls, cfg: GatewayConfig, keyring: KeyRing, poll_s: float = POLL_S) -> KeySync:
        """Open the store, load every dynamic key into `keyring`, start polling for changes.

        A shared store that cannot be read at start-up is logged, not fatal: config keys
        still work, and dynamic keys appear as soon as a poll succeeds.
        """
        ks = cls(await open_key_store(cfg), keyring, poll_s)
        try:
            await ks.refresh()
        except Exception as e:
            log.error(
                "could not load dynamic API keys (%s: %s); retrying in the background", type(e).__name__, e
            )
        ks._task = asyncio.create_task(ks._poll(), name="keystore-poll")
        return ks

    async def refresh(self, force: bool = False) -> bool:
        """Reload keys if the shared version changed. True when something was reloaded."""
        async with self._lock:
            version = await self.store.version()
            if version == self._version and not force:
                return False
            records = await self.store.load()
            self._apply(records)
            self._version = version
            return True

    def _apply(self, records: dict[str, KeyRecord]) -> None:
        now = time.time()
        wanted = {
            r.name: r.key_sha256
            for r in records.values()
            if r.revoked is None and (r.expires is None or r.expires > now)
        }
        for name, digest in self._applied.items():
            if wanted.get(name) != digest:
                self.keyring.drop(digest)
        for name in wanted:
            self.keyring.put(records[name].key())
        self._applied = wanted
        self.records = records

    async def _poll(self) -> None:
        failing = False
        while True:
            await asyncio.sleep(self.poll_s)
            try:
                await self.refresh()
                if failing:
                    log.warning("dynamic API keys: the key store answers again")
                failing = False
            except Exception as e:
                if not failing:
                    log.warning("dynamic API keys: cannot poll the key store (%s: %s)", type(e).__name__, e)
                failing = True

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        await self.store.close()
