"""Dynamic API keys (created through the admin API), persisted and shared by replicas.

Secrets are shown once, at creation or rotation, and stored only as SHA-256 digests
(plus a short hint like `sk-gw-Ab...x9Qz` so people can tell keys apart).

Where keys live:
- Redis (when `cfg.redis_url` is set): HASH `gw:keys` (name -> JSON record) and a
  counter `gw:keys:version` bumped in the same transaction as every change.
- SQLite (when the ledger is `sqlite:///...`): table `api_keys` in the ledger file, and
  a one-row table `api_keys_version`.
- memory:// : a dict (tests; lost on exit).

Every replica polls the version every `POLL_S` seconds (one GET or one tiny SELECT) and
reloads all keys when it changed, so a key created or revoked on one replica works or
stops working on all of them within about a second. Revoked keys stay listed.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any, Protocol, TypeVar

import orjson

from ..errors import GatewayError, invalid_request
from .auth import Key, KeyRing, hash_key, new_secret

if TYPE_CHECKING:
    from ..config import GatewayConfig

log = logging.getLogger("gateway.keystore")

T = TypeVar("T")

POLL_S = 1.0
NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._@:+-]{0,63}$")


@dataclass
class KeyRecord:
    name: str
    key_sha256: str
    hint: str
    models: list[str] = field(default_factory=lambda: ["*"])
    rpm: int | None = None
    tpm: int | None = None
    max_concurrent: int | None = None
    budget: str | None = None
    created: float = 0.0
    expires: float | None = None
    revoked: float | None = None  # unix time of revocation

    def key(self) -> Key:
        return Key(
            name=self.name,
            key_sha256=self.key_sha256,
            models=tuple(self.models),
            rpm=self.rpm,
            tpm=self.tpm,
            max_concurrent=self.max_concurrent,
            budget=self.budget,
            expires_at=self.expires,
            source="dynamic",
        )

    def info(self) -> dict[str, Any]:
        """What the admin API shows: never the digest."""
        d = asdict(self)
        d.pop("key_sha256")
        d["source"] = "dynamic"
        d["revoked"] = self.revoked is not None
        d["revoked_at"] = self.revoked
        return d


def config_key_info(k: Key) -> dict[str, Any]:
    return {
        "name": k.name, "hint": None, "models": list(k.models), "rpm": k.rpm, "tpm": k.tpm,
        "max_concurrent": k.max_concurrent, "budget": k.budget, "created": None, "expires": None,
        "revoked": False, "revoked_at": None, "source": "config",
    }  # fmt: skip


def hint(secret: str) -> str:
    return f"{secret[:8]}...{secret[-4:]}"


# --- backends ----------------------------------------------------------------------------


class Backend(Protocol):
    async def version(self) -> int: ...
    async def load(self) -> dict[str, KeyRecord]: ...
    async def insert(self, rec: KeyRecord) -> bool:
        """Add a new key; False if the name is taken."""
        ...

    async def update(self, rec: KeyRecord) -> None: ...
    async def close(self) -> None: ...


class MemoryBackend:
    def __init__(self) -> None:
        self.records: dict[str, KeyRecord] = {}
        self.ver = 0

    async def version(self) -> int:
        return self.ver

    async def load(self) -> dict[str, KeyRecord]:
        return {n: KeyRecord(**asdict(r)) for n, r in self.records.items()}

    async def insert(self, rec: KeyRecord) -> bool:
        if rec.name in self.records:
            return False
        await self.update(rec)
        return True

    async def update(self, rec: KeyRecord) -> None:
        self.records[rec.name] = KeyRecord(**asdict(rec))
        self.ver += 1

    async def close(self) -> None:
        pass


class RedisBackend:
    HASH = "gw:keys"
    VERSION = "gw:keys:version"

    def __init__(self, url: str) -> None:
        import redis.asyncio as aioredis
        from redis.asyncio.retry import Retry
        from redis.backoff import NoBackoff

        # One quick retry: a Redis that is down must not stall start-up or the poll loop.
        self.r = aioredis.Redis.from_url(
            url, socket_timeout=3.0, socket_connect_timeout=2.0, retry=Retry(NoBackoff(), 1)
        )

    async def version(self) -> int:
        return int(await self.r.get(self.VERSION) or 0)

    async def load(self) -> dict[str, KeyRecord]:
        raw = await self.r.hgetall(self.HASH)
        return {k.decode(): KeyRecord(**orjson.loads(v)) for k, v in raw.items()}

    async def insert(self, rec: KeyRecord) -> bool:
        async with self.r.pipeline(transaction=True) as p:
            p.hsetnx(self.HASH, rec.name, orjson.dumps(asdict(rec)))
            p.incr(self.VERSION)
            created, _ = await p.execute()
        return bool(created)

    async def update(self, rec: KeyRecord) -> None:
        async with self.r.pipeline(transaction=True) as p:
            p.hset(self.HASH, rec.name, orjson.dumps(asdict(rec)))
            p.incr(self.VERSION)
            await p.execute()

    async def close(self) -> None:
        await self.r.aclose()


class SqliteBackend:
    SCHEMA = """
    CREATE TABLE IF NOT EXISTS api_keys (name TEXT PRIMARY KEY, record TEXT NOT NULL);
    CREATE TABLE IF NOT EXISTS api_keys_version (id INTEGER PRIMARY KEY CHECK (id = 0), version INTEGER NOT NULL);
    INSERT OR IGNORE INTO api_keys_version VALUES (0, 0);
    """

    def __init__(self, path: str) -> None:
        from ..metering.store_sqlite import connect

        self.conn = connect(path)
        self.conn.executescript(self.SCHEMA)
        # One thread owns the connection, so transactions never interleave.
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="keystore-sqlite")

    @classmethod
    async def open(cls, path: str) -> SqliteBackend:
        return await asyncio.to_thread(cls, path)

    async def _run(self, fn: Callable[[], T]) -> T:
        return await asyncio.get_running_loop().run_in_executor(self._pool, fn)

    async def version(self) -> int:
        row = await self._run(lambda: self.conn.execute("SELECT version FROM api_keys_version").fetchone())
        return int(row[0])

    async def load(self) -> dict[str, KeyRecord]:
        rows = await self._run(lambda: self.conn.execute("SELECT name, record FROM api_keys").fetchall())
        return {n: KeyRecord(**orjson.loads(r)) for n, r in rows}

    def _write(self, sql: str, rec: KeyRecord) -> bool:
        c = self.conn
        c.execute("BEGIN IMMEDIATE")
        try:
            changed = c.execute(sql, (rec.name, orjson.dumps(asdict(rec)).decode())).rowcount
            c.execute("UPDATE api_keys_version SET version = version + 1")
            c.execute("COMMIT")
        except BaseException:
            c.execute("ROLLBACK")
            raise
        return changed > 0

    async def insert(self, rec: KeyRecord) -> bool:
        return await self._run(lambda: self._write("INSERT OR IGNORE INTO api_keys VALUES (?, ?)", rec))

    async def update(self, rec: KeyRecord) -> None:
        await self._run(lambda: self._write("INSERT OR REPLACE INTO api_keys VALUES (?, ?)", rec))

    async def close(self) -> None:
        await self._run(self.conn.close)
        self._pool.shutdown(wait=False)


async def open_backend(cfg: GatewayConfig) -> Backend:
    if cfg.redis_url:
        return RedisBackend(cfg.redis_url)
    if cfg.store.startswith("sqlite:///"):
        return await SqliteBackend.open(cfg.store[len("sqlite:///") :])
    return MemoryBackend()


# --- the store ---------------------------------------------------------------------------


def parse_expires(value: str | float | None) -> float | None:
    """`2027-01-01`, an ISO 8601 time (UTC when no zone) or unix seconds -> unix seconds."""
    if value is None or value == "":
        return None
    if isinstance(value, int | float):
        return float(value)
    from ..metering.query import parse_time

    try:
        t = parse_time(value)
    except ValueError:
        raise invalid_request(
            f"expires: {value!r} is not a date (use 2027-01-01 or ISO 8601)", "expires"
        ) from None
    return t


class KeyStore:
    """Creates, revokes and rotates dynamic keys and keeps `keyring` in sync with the backend."""

    def __init__(self, backend: Backend, keyring: KeyRing, poll_s: float = POLL_S) -> None:
        self.backend = backend
        self.keyring = keyring
        self.poll_s = poll_s
        self.records: dict[str, KeyRecord] = {}
        self._version = -1
        self._applied: dict[str, str] = {}  # name -> digest currently in the keyring
        self._task: asyncio.Task[None] | None = None
        self._lock = asyncio.Lock()

    @classmethod
    async def start(cls, cfg: GatewayConfig, keyring: KeyRing, poll_s: float = POLL_S) -> KeyStore:
        """Open the backend, load every dynamic key into `keyring`, start polling for changes.

        A shared backend that cannot be read at start-up is logged, not fatal: config keys
        still work, and dynamic keys appear as soon as a poll succeeds.
        """
        ks = cls(await open_backend(cfg), keyring, poll_s)
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
            version = await self.backend.version()
            if version == self._version and not force:
                return False
            records = await self.backend.load()
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

    # --- admin operations -------------------------------------------------------------------

    def _config_names(self) -> set[str]:
        return {k.name for k in self.keyring.config_keys.values()}

    async def create(
        self,
        name: str,
        models: list[str] | None = None,
        rpm: int | None = None,
        tpm: int | None = None,
        max_concurrent: int | None = None,
        budget: str | None = None,
        expires: str | float | None = None,
    ) -> tuple[dict[str, Any], str]:
        """A new key: returns (its public info, the secret). The secret is not kept."""
        if not NAME_RE.match(name):
            raise invalid_request(
                "name: 1-64 characters of letters, digits and ._@:+- (start with a letter or digit)", "name"
            )
        if name in self._config_names():
            raise GatewayError(409, f"A key named `{name}` is defined in the config file.", "key_exists")
        for field_name, v in (("rpm", rpm), ("tpm", tpm), ("max_concurrent", max_concurrent)):
            if v is not None and v < 1:
                raise invalid_request(f"{field_name} must be at least 1", field_name)
        if budget:
            from ..ratelimit import parse_budget

            try:
                parse_budget(budget)
            except ValueError as e:
                raise invalid_request(f"budget: {e}", "budget") from None
        exp = parse_expires(expires)
        if exp is not None and exp <= time.time():
            raise invalid_request("expires is in the past", "expires")
        secret = new_secret()
        rec = KeyRecord(
            name=name, key_sha256=hash_key(secret), hint=hint(secret), models=list(models or ["*"]),
            rpm=rpm, tpm=tpm, max_concurrent=max_concurrent, budget=budget or None,
            created=time.time(), expires=exp,
        )  # fmt: skip
        if not await self.backend.insert(rec):
            raise GatewayError(
                409, f"A key named `{name}` already exists (revoked keys keep their name).", "key_exists"
            )
        await self.refresh(force=True)
        return rec.info(), secret

    def list(self) -> list[dict[str, Any]]:
        out = [config_key_info(k) for k in self.keyring.config_keys.values()]
        out += [r.info() for r in sorted(self.records.values(), key=lambda r: r.created)]
        return out

    async def _existing(self, name: str) -> KeyRecord:
        await self.refresh()
        rec = self.records.get(name)
        if rec is None:
            if name in self._config_names():
                raise GatewayError(
                    409,
                    f"Key `{name}` is defined in the config file; edit the file to change it.",
                    "config_key",
                )
            raise GatewayError(404, f"No key named `{name}`.", "key_not_found")
        return KeyRecord(**asdict(rec))  # a copy: the loaded records change only on reload

    async def revoke(self, name: str) -> dict[str, Any]:
        rec = await self._existing(name)
        if rec.revoked is None:
            rec.revoked = time.time()
            await self.backend.update(rec)
            await self.refresh(force=True)
        return rec.info()

    async def rotate(self, name: str) -> tuple[dict[str, Any], str]:
        """A new secret for an existing key; the old one stops working at once (here) or
        within a poll interval (other replicas)."""
        rec = await self._existing(name)
        if rec.revoked is not None:
            raise GatewayError(409, f"Key `{name}` is revoked; create a new key instead.", "key_revoked")
        secret = new_secret()
        rec.key_sha256, rec.hint = hash_key(secret), hint(secret)
        await self.backend.update(rec)
        await self.refresh(force=True)
        return rec.info(), secret

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        await self.backend.close()
