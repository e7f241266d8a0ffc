"""A small synchronous client of the admin API, shared by the CLI commands."""

from __future__ import annotations

import argparse
import os
import sys
from typing import Any

import httpx


def add_connection_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--url", default=os.environ.get("GATEWAY_URL", "http://127.0.0.1:8000"), help="gateway base URL")
    p.add_argument(
        "--admin-key", default=os.environ.get("GATEWAY_ADMIN_KEY"), help="admin key (default $GATEWAY_ADMIN_KEY)"
    )


def call(args: argparse.Namespace, method: str, path: str, **kw: Any) -> Any:
    """Call the admin API; print the error and exit 1 on failure, return the decoded JSON otherwise."""
    headers = {"authorization": f"Bearer {args.admin_key}"} if args.admin_key else {}
    try:
        r = httpx.request(method, args.url.rstrip("/") + path, headers=headers, timeout=30, **kw)
    except httpx.HTTPError as e:
        print(f"gateway: cannot reach {args.url}: {e}", file=sys.stderr)
        raise SystemExit(1) from None
    if r.status_code >= 400:
        try:
            msg = r.json()["error"]["message"]
        except Exception:
            msg = r.text
        print(f"gateway: {method} {path} -> {r.status_code}: {msg}", file=sys.stderr)
        raise SystemExit(1)
    return r.json() if r.content else None


def print_table(rows: list[dict[str, Any]], columns: list[str]) -> None:
    widths = {c: max([len(c), *(len(str(r.get(c, ""))) for r in rows)]) for c in columns}
    print("  ".join(c.upper().ljust(widths[c]) for c in columns))
    for r in rows:
        print("  ".join(str(r.get(c, "")).ljust(widths[c]) for c in columns))
