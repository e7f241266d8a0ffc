"""Dynamic keys: create, use, list, revoke, rotate; persisted; shared between replicas."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import pytest

from gateway.config import GatewayConfig
from gateway.errors import GatewayError
from gateway.keys.admin import KeyAdmin
from gateway.keys.auth import KeyRing, hash_key
from gateway.keys.sync import KeySync
from tests.redis_server import RedisServer

CONFIG_SECRET = "sk-config-key"


def cfg(store: str, redis: str | None = None) -> GatewayConfig:
    return GatewayConfig.model_validate({
        "store": store, "redis": redis,
        "auth": {"admin_key": "sk-admin", "keys": [{"name": "static", "key_sha256": hash_key(CONFIG_SECRET)}]},
    })  # fmt: skip


async def _lifecycle(c: GatewayConfig) -> None:
    ring = KeyRing.from_config(c.auth)
    ks = KeyAdmin(await KeySync.start(c, ring, poll_s=0.05))
    try:
        info, secret = await ks.create(
            "team-a", ["qwen*"], rpm=600, tpm=100_000, budget="5000000/month", expires="2099-01-01"
        )
        assert secret.startswith("sk-gw-") and "key_sha256" not in info
        assert info["hint"].startswith(secret[:8]) and info["hint"].endswith(secret[-4:])
        key = ring.lookup(secret)
        assert key is not None and key.name == "team-a" and key.allows("qwen-7b") and not key.allows("llama")
        assert (key.rpm, key.tpm, key.budget, key.source) == (600, 100_000, "5000000/month", "dynamic")
        listed = {k["name"]: k for k in ks.list()}
        assert listed["static"]["source"] == "config" and listed["team-a"]["source"] == "dynamic"
        assert all("key_sha256" not in k and "key" not in k for k in listed.values())

        with pytest.raises(GatewayError) as e:
            await ks.create("team-a")
        assert e.value.status == 409
        with pytest.raises(GatewayError) as e:
            await ks.create("static")
        assert e.value.status == 409
        with pytest.raises(GatewayError) as e:
            await ks.revoke("static")
        assert e.value.status == 409
        with pytest.raises(GatewayError) as e:
            await ks.create("bad name!")
        assert e.value.status == 400
        with pytest.raises(GatewayError) as e:
            await ks.create("b", budget="lots")
        assert e.value.status == 400

        _, new_secret = await ks.rotate("team-a")
        assert ring.lookup(secret) is None and ring.lookup(new_secret) is not None
        revoked = await ks.revoke("team-a")
        assert revoked["revoked"] is True and ring.lookup(new_secret) is None
        assert ring.lookup(CONFIG_SECRET) is not None  # config keys are untouched
        with pytest.raises(GatewayError) as e:
            await ks.rotate("team-a")
        assert e.value.status == 409
        with pytest.raises(GatewayError) as e:
            await ks.revoke("nobody")
        assert e.value.status == 404

        _, live = await ks.create("team-b")
    finally:
        await ks.sync.close()

    # A restarted gateway loads what was persisted.
    ring2 = KeyRing.from_config(c.auth)
    ks2 = KeyAdmin(await KeySync.start(c, ring2))
    try:
        assert ring2.lookup(live) is not None and ring2.lookup(new_secret) is None
        assert {k["name"]: k["revoked"] for k in ks2.list()} == {"static": False, "team-a": True, "team-b": False}
    finally:
        await ks2.sync.close()


def test_keys_in_sqlite(tmp_path: Path) -> None:
    asyncio.run(_lifecycle(cfg(f"sqlite:///{tmp_path}/usage.db")))


def test_keys_in_redis(redis_server: RedisServer) -> None:
    asyncio.run(_lifecycle(cfg(f"sqlite:///{redis_server.dir}/usage.db", redis=redis_server.url)))


def test_expired_key_stops_working() -> None:
    async def main() -> None:
        c = cfg("memory://")
        ring = KeyRing.from_config(c.auth)
        ks = KeyAdmin(await KeySync.start(c, ring))
        _, secret = await ks.create("short", expires=time.time() + 0.2)
        assert ring.lookup(secret) is not None
        await asyncio.sleep(0.3)  # the expiry time itself is what is under test
        assert ring.lookup(secret) is None
        with pytest.raises(GatewayError):
            await ks.create("old", expires="2001-01-01")
        await ks.sync.close()

    asyncio.run(main())


def test_replicas_see_each_others_changes_within_the_poll_interval(redis_server: RedisServer) -> None:
    async def main() -> None:
        c = cfg("memory://", redis=redis_server.url)
        ring_a, ring_b = KeyRing.from_config(c.auth), KeyRing.from_config(c.auth)
        a = KeyAdmin(await KeySync.start(c, ring_a, poll_s=0.1))
        b = KeyAdmin(await KeySync.start(c, ring_b, poll_s=0.1))
        try:
            _, secret = await a.create("shared")
            t0 = time.monotonic()
            while ring_b.lookup(secret) is None:
                assert time.monotonic() - t0 < 2.0, "replica B never saw the new key"
                await asyncio.sleep(0.01)
            await b.revoke("shared")
            t0 = time.monotonic()
            while ring_a.lookup(secret) is not None:
                assert time.monotonic() - t0 < 2.0, "revocation did not reach replica A"
                await asyncio.sleep(0.01)
            assert time.monotonic() - t0 < 0.5  # about one poll interval
        finally:
            await a.sync.close()
            await b.sync.close()

    asyncio.run(main())
