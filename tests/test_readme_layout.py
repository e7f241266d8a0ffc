"""The README's request walk names only paths that exist, and every part of `gateway/`.

Bare file names resolve against the folder named most recently before them, then
against `gateway/` itself, so the prose can say "`keys/` ... `sync.py`".
"""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PKG = ROOT / "gateway"
# Packages on the request path: each of their modules must be named, not just the folder.
REQUEST_PATH = ("server", "proxy", "keys", "routing")


def section() -> str:
    text = (ROOT / "README.md").read_text()
    start = text.index("## Where a request goes")
    end = text.index("\n## ", start + 1)
    return text[start:end]


def resolved_names(text: str) -> tuple[set[Path], list[str]]:
    """(paths the text names, tokens that name nothing)."""
    found: set[Path] = set()
    missing: list[str] = []
    current = PKG
    for token in re.findall(r"`([\w/.]+(?:\.py|/))`", text):
        if token == "gateway/":
            continue
        if token.startswith("tests/"):
            if not (ROOT / token).exists():
                missing.append(token)
            continue
        candidates = [current / token, PKG / token] if "/" not in token.rstrip("/") else [PKG / token]
        hit = next((c for c in candidates if c.exists()), None)
        if hit is None:
            missing.append(token)
            continue
        found.add(hit.resolve())
        if token.endswith("/"):
            current = hit
        elif "/" in token:
            current = hit.parent
    return found, missing


def test_every_named_path_exists() -> None:
    _, missing = resolved_names(section())
    assert not missing, f"README names paths that do not exist: {missing}"


def test_every_subpackage_and_top_level_module_is_named() -> None:
    found, _ = resolved_names(section())
    packages = {p.parent.resolve() for p in PKG.rglob("__init__.py") if p.parent != PKG}
    modules = {p.resolve() for p in PKG.glob("*.py") if p.name not in ("__init__.py", "__main__.py")}
    for name in REQUEST_PATH:
        modules |= {p.resolve() for p in (PKG / name).glob("*.py") if p.name != "__init__.py"}
    left_out = sorted(str(p.relative_to(PKG)) for p in (packages | modules) - found)
    assert not left_out, f"README's request walk leaves out: {left_out}"


def test_the_check_catches_stale_names() -> None:
    # What the old table said: `ratelimit.py` (a package), `inference.py` (moved), and a
    # bare name that exists only in another folder than the one named before it.
    stale = "`ratelimit.py` `inference.py` `balancers/` `keys/` `pipeline.py` `proxy/` `pipeline.py`"
    found, missing = resolved_names(stale)
    assert missing == ["ratelimit.py", "inference.py", "balancers/", "pipeline.py"]
    assert PKG / "proxy" / "pipeline.py" in found
