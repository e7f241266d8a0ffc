"""CLI commands for API keys; all but `hash` go through the admin API (`server.admin_client`).

gateway keys hash [SECRET]   (offline: the SHA-256 for `auth.keys[].key_sha256`)
gateway keys create --name N --models 'qwen*' --rpm 600 --tpm 100000 --budget 5000000/month --expires 2027-01-01
gateway keys list | revoke NAME | rotate NAME
"""

from __future__ import annotations

import argparse
import json
import sys
from datetime import UTC, datetime
from typing import Any

from ..server import admin_client
from .auth import hash_key


def register(keys_sub: Any) -> None:
    h = keys_sub.add_parser("hash", help="print the SHA-256 of a key, for `auth.keys[].key_sha256`")
    h.add_argument("secret", nargs="?")
    h.set_defaults(func=_hash)

    c = keys_sub.add_parser("create", help="create a key; its secret is printed once")
    c.add_argument("--name", required=True)
    c.add_argument("--models", default=None, help="comma-separated pool name patterns (default: all)")
    c.add_argument("--rpm", type=int)
    c.add_argument("--tpm", type=int)
    c.add_argument("--max-concurrent", type=int)
    c.add_argument("--budget", help="total tokens: N, N/day, N/week or N/month")
    c.add_argument("--expires", help="date or ISO 8601 time (UTC), e.g. 2027-01-01")
    c.set_defaults(func=_create)

    ls = keys_sub.add_parser("list", help="list keys (no secrets)")
    ls.add_argument("--json", action="store_true")
    ls.set_defaults(func=_list)

    rv = keys_sub.add_parser("revoke", help="revoke a key on every replica")
    rv.add_argument("name")
    rv.set_defaults(func=_revoke)

    ro = keys_sub.add_parser("rotate", help="replace a key's secret; the new one is printed once")
    ro.add_argument("name")
    ro.set_defaults(func=_rotate)

    for p in (c, ls, rv, ro):
        admin_client.add_connection_args(p)


def _hash(args: argparse.Namespace) -> int:
    secret = args.secret if args.secret is not None else sys.stdin.readline().strip()
    if not secret:
        print("gateway keys hash: give the key as an argument or on standard input", file=sys.stderr)
        return 2
    print(hash_key(secret))
    return 0


def _create(args: argparse.Namespace) -> int:
    body: dict[str, Any] = {"name": args.name}
    for k in ("rpm", "tpm", "max_concurrent", "budget", "expires"):
        if getattr(args, k) is not None:
            body[k] = getattr(args, k)
    if args.models:
        body["models"] = [p.strip() for p in args.models.split(",") if p.strip()]
    out = admin_client.call(args, "POST", "/admin/keys", json=body)
    print(out["key"])
    print(f"created key {out['name']!r}; the secret above is shown only once", file=sys.stderr)
    return 0


def _when(ts: Any) -> str:
    if not isinstance(ts, int | float):
        return ""
    return datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%d %H:%M")


def _list(args: argparse.Namespace) -> int:
    rows = admin_client.call(args, "GET", "/admin/keys")["data"]
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    table = [
        {
            **r,
            "models": ",".join(r.get("models") or []),
            "created": _when(r.get("created")),
            "expires": _when(r.get("expires")),
            "revoked": "yes" if r.get("revoked") else "",
            "hint": r.get("hint") or "",
        }
        for r in rows
    ]
    cols = [
        "name",
        "source",
        "hint",
        "models",
        "rpm",
        "tpm",
        "max_concurrent",
        "budget",
        "created",
        "expires",
        "revoked",
    ]
    admin_client.print_table([{c: ("" if t.get(c) is None else t[c]) for c in cols} for t in table], cols)
    return 0


def _revoke(args: argparse.Namespace) -> int:
    admin_client.call(args, "DELETE", f"/admin/keys/{args.name}")
    print(f"revoked key {args.name!r}")
    return 0


def _rotate(args: argparse.Namespace) -> int:
    out = admin_client.call(args, "POST", f"/admin/keys/{args.name}/rotate")
    print(out["key"])
    print(f"rotated key {args.name!r}; the old secret no longer works", file=sys.stderr)
    return 0
