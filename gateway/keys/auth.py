"""API keys: hashed lookup, per-key model allowlists, the admin key.

Keys are stored as SHA-256 hex digests only. Lookup is by digest in a dict, then the
digest is compared again with `hmac.compare_digest`, so timing reveals nothing about
how much of a guess matched.
"""

from __future__ import annotations

import fnmatch
import hashlib
import hmac
import secrets
from dataclasses import dataclass, field

from ..config import AuthConfig, KeyConfig


def hash_key(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


def new_secret(prefix: str = "sk-gw-") -> str:
    return prefix + secrets.token_urlsafe(32)


@dataclass(frozen=True)
class Key:
    name: str
    key_sha256: str
    models: tuple[str, ...] = ("*",)
    rpm: int | None = None
    tpm: int | None = None
    max_concurrent: int | None = None
    budget: str | None = None
    expires_at: float | None = None  # unix time; dynamic keys only
    source: str = "config"  # "config" | "dynamic" | "anonymous"

    def allows(self, pool: str) -> bool:
        # Runs on every request: the usual allowlists ("*", or names without wildcards,
        # as pool names cannot hold any) need no pattern matching.
        models = self.models
        if models == ("*",) or pool in models:
            return True
        return any(fnmatch.fnmatchcase(pool, pat) for pat in models)

    @classmethod
    def from_config(cls, k: KeyConfig) -> Key:
        return cls(
            name=k.name,
            key_sha256=k.key_sha256,
            models=tuple(k.models),
            rpm=k.rpm,
            tpm=k.tpm,
            max_concurrent=k.max_concurrent,
            budget=k.budget,
        )


ANONYMOUS = Key(name="anonymous", key_sha256="", source="anonymous")


@dataclass
class KeyRing:
    """Config keys plus dynamic keys (put here by the admin API's key store).

    A config reload replaces only the config keys (`load_config`); dynamic keys stay.
    """

    mode: str
    admin_sha256: str | None
    config_keys: dict[str, Key] = field(default_factory=dict)
    dynamic_keys: dict[str, Key] = field(default_factory=dict)

    @classmethod
    def from_config(cls, cfg: AuthConfig) -> KeyRing:
        ring = cls(mode=cfg.mode, admin_sha256=None)
        ring.load_config(cfg)
        return ring

    def load_config(self, cfg: AuthConfig) -> None:
        self.mode = cfg.mode
        self.admin_sha256 = cfg.admin_key_sha256 or (hash_key(cfg.admin_key) if cfg.admin_key else None)
        self.config_keys = {k.key_sha256: Key.from_config(k) for k in cfg.keys}

    def put(self, key: Key) -> None:
        self.dynamic_keys[key.key_sha256] = key

    def drop(self, key_sha256: str) -> None:
        self.dynamic_keys.pop(key_sha256, None)

    def lookup(self, secret: str | None) -> Key | None:
        """The key for a presented secret, or None. In `none` mode everyone is anonymous."""
        if self.mode == "none" and not secret:
            return ANONYMOUS
        if not secret:
            return None if self.mode != "none" else ANONYMOUS
        digest = hash_key(secret)
        key = self.config_keys.get(digest) or self.dynamic_keys.get(digest)
        if key is None or not hmac.compare_digest(key.key_sha256, digest):
            return ANONYMOUS if self.mode == "none" else None
        if key.expires_at is not None:
            import time

            if time.time() >= key.expires_at:
                return None
        return key

    def is_admin(self, secret: str | None) -> bool:
        if not secret or not self.admin_sha256:
            return False
        return hmac.compare_digest(hash_key(secret), self.admin_sha256)


def bearer(authorization: str | None) -> str | None:
    """The token of an `Authorization: Bearer <token>` header (scheme case-insensitive)."""
    if not authorization:
        return None
    scheme, _, token = authorization.partition(" ")
    if scheme.lower() != "bearer":
        return None
    token = token.strip()
    return token or None
