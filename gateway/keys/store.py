"""Where dynamic keys live, shared by replicas: the `KeyStore` interface and its choice.

- Redis (when `cfg.redis_url` is set): HASH `gw:keys` (name -> JSON record) and a
  counter `gw:keys:version` bumped in the same transaction as every change.
- SQLite (when the ledger is `sqlite:///...`): table `api_keys` in the ledger file, and
  a one-row table `api_keys_version`.
- memory:// : a dict (tests; lost on exit).

Every change bumps the version; `keys.sync.KeySync` polls it.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Protocol

from .record import KeyRecord

if TYPE_CHECKING:
    from ..config import GatewayConfig


class KeyStore(Protocol):
    async def version(self) -> int: ...
    async def load(self) -> dict[str, KeyRecord]: ...
    async def insert(self, rec: KeyRecord) -> bool:
        """Add a new key; False if the name is taken."""
        ...

    async def update(self, rec: KeyRecord) -> None: ...
    async def close(self) -> None: ...


async def open_key_store(cfg: GatewayConfig) -> KeyStore:
    if cfg.redis_url:
        from .store_redis import RedisKeyStore

        return RedisKeyStore(cfg.redis_url)
    if cfg.store.startswith("sqlite:///"):
        from .store_sqlite import SqliteKeyStore

        return await SqliteKeyStore.open(cfg.store[len("sqlite:///") :])
    from .store_memory import MemoryKeyStore

    return MemoryKeyStore()
