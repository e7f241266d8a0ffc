"""The key check: SHA-256 lookup, allowlists, the admin key, auth mode none."""

from __future__ import annotations

from gateway import config
from gateway.keys.auth import KeyRing, bearer, hash_key


def ring() -> KeyRing:
    cfg = config.AuthConfig(
        admin_key="adm",
        keys=[config.KeyConfig(name="a", key_sha256=hash_key("sk-a"), models=["qwen*"])],
    )
    return KeyRing.from_config(cfg)


def test_keys_hashed_lookup_allowlist_admin() -> None:
    r = ring()
    assert r.lookup("sk-a") is not None and r.lookup("sk-a").name == "a"  # type: ignore[union-attr]
    assert r.lookup("sk-b") is None and r.lookup(None) is None
    k = r.lookup("sk-a")
    assert k is not None and k.allows("qwen3-8b") and not k.allows("llama")
    assert r.is_admin("adm") and not r.is_admin("sk-a")
    assert bearer("Bearer x") == "x" and bearer("bearer  x ") == "x" and bearer("Basic x") is None


def test_none_mode_serves_anonymous() -> None:
    r = KeyRing.from_config(config.AuthConfig(mode="none"))
    assert r.lookup(None) is not None and r.lookup("anything") is not None
