"""Admin operations on dynamic keys: create, list, revoke, rotate.

Each change is written to the shared store (which bumps its version) and then applied
here at once; other replicas pick it up at their next poll. Revoked keys stay listed.
"""

from __future__ import annotations

import re
import time
from dataclasses import asdict
from typing import Any

from ..errors import GatewayError, invalid_request
from .auth import hash_key, new_secret
from .record import KeyRecord, config_key_info, hint
from .sync import KeySync

NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._@:+-]{0,63}$")


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


class KeyAdmin:
    """The admin API's view of the dynamic keys (`state.key_sync` does the syncing)."""

    def __init__(self, sync: KeySync) -> None:
        self.sync = sync

    def _config_names(self) -> set[str]:
        return {k.name for k in self.sync.keyring.config_keys.values()}

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
        if not await self.sync.store.insert(rec):
            raise GatewayError(
                409, f"A key named `{name}` already exists (revoked keys keep their name).", "key_exists"
            )
        await self.sync.refresh(force=True)
        return rec.info(), secret

    def list(self) -> list[dict[str, Any]]:
        out = [config_key_info(k) for k in self.sync.keyring.config_keys.values()]
        out += [r.info() for r in sorted(self.sync.records.values(), key=lambda r: r.created)]
        return out

    async def _existing(self, name: str) -> KeyRecord:
        await self.sync.refresh()
        rec = self.sync.records.get(name)
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
            await self.sync.store.update(rec)
            await self.sync.refresh(force=True)
        return rec.info()

    async def rotate(self, name: str) -> tuple[dict[str, Any], str]:
        """A new secret for an existing key; the old one stops working at once (here) or
        within a poll interval (other replicas)."""
        rec = await self._existing(name)
        if rec.revoked is not None:
            raise GatewayError(409, f"Key `{name}` is revoked; create a new key instead.", "key_revoked")
        secret = new_secret()
        rec.key_sha256, rec.hint = hash_key(secret), hint(secret)
        await self.sync.store.update(rec)
        await self.sync.refresh(force=True)
        return rec.info(), secret
