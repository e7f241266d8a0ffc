"""`gateway status` (a table of every backend) and `gateway reload`, via the admin API."""

from __future__ import annotations

import argparse
from typing import Any

from ..server.admin_client import add_connection_args, call, print_table

COLUMNS = [
    "pool",
    "id",
    "engine",
    "start",
    "state",
    "pid",
    "port",
    "devices",
    "outstanding",
    "restarts",
    "uptime",
    "load",
    "last_error",
]


def register(sub: Any, keys_sub: Any) -> None:
    s = sub.add_parser("status", help="list backends: state, pid, port, devices, restarts, last error")
    add_connection_args(s)
    s.add_argument("--logs", metavar="BACKEND_ID", help="print the last lines of one spawned engine's output")
    s.add_argument("--lines", type=int, default=50)
    s.set_defaults(func=_status)

    r = sub.add_parser("reload", help="reload the config file of a running gateway (like SIGHUP)")
    add_connection_args(r)
    r.set_defaults(func=_reload)


def _short(value: Any, width: int = 60) -> str:
    text = str(value).splitlines()[0] if value else ""
    return text if len(text) <= width else text[: width - 1] + "…"


def _status(args: argparse.Namespace) -> int:
    if args.logs:
        from urllib.parse import quote

        data = call(
            args, "GET", f"/admin/backends/{quote(args.logs, safe='/@:')}/logs", params={"lines": args.lines}
        )
        for line in data["lines"]:
            print(line)
        return 0
    data = call(args, "GET", "/admin/backends")
    rows = [
        {
            **r,
            "last_error": _short(r.get("last_error")),
            "pid": r.get("pid") or "",
            "port": r.get("port") or "",
            "uptime": "" if r.get("uptime") is None else f"{r['uptime']:.0f}s",
            "start": r.get("start") or "",
            "load": _load(r),
        }
        for r in data["data"]
    ]
    print_table(rows, COLUMNS)
    print(f"\n{data['ready']}/{data['total']} ready")
    return 0


def _load(row: dict[str, Any]) -> str:
    """Last cold start and wake, for engines the gateway starts on demand or puts to sleep."""
    parts = []
    if row.get("last_load_seconds") is not None:
        parts.append(f"start {row['last_load_seconds']:.1f}s")
    if row.get("last_wake_seconds") is not None:
        parts.append(f"wake {row['last_wake_seconds']:.1f}s")
    if row.get("retry_in") is not None:
        parts.append(f"retry in {row['retry_in']:.0f}s")
    return ", ".join(parts)


def _reload(args: argparse.Namespace) -> int:
    data = call(args, "POST", "/admin/reload")
    print("reloaded")
    for key in ("added", "removed", "changed"):
        for item in data.get(key, []):
            print(f"  {key}: {item}")
    return 0
