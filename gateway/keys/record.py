"""A dynamic key as stored: the digest of its secret, a hint, its limits, its lifetime.

Secrets are shown once, at creation or rotation, and stored only as SHA-256 digests
(plus a short hint like `sk-gw-Ab...x9Qz` so people can tell keys apart).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

from .auth import Key


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
