"""CLI command for usage; it goes through the admin API (`server.admin_client`).

gateway usage --by key|pool|user|model|day|hour --since 24h [--until ...] [--csv | --json]
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from ..server import admin_client
from .query import GROUPS, METRICS, to_csv


def register(sub: Any) -> None:
    u = sub.add_parser("usage", help="token usage totals from the ledger")
    u.add_argument("--by", default="key", choices=GROUPS)
    u.add_argument("--since", default="24h", help="24h, 7d, unix seconds or ISO 8601")
    u.add_argument("--until", default=None)
    fmt = u.add_mutually_exclusive_group()
    fmt.add_argument("--csv", action="store_true")
    fmt.add_argument("--json", action="store_true")
    u.set_defaults(func=_usage)
    admin_client.add_connection_args(u)


def _usage(args: argparse.Namespace) -> int:
    params = {"group_by": args.by, "since": args.since}
    if args.until:
        params["until"] = args.until
    rows = admin_client.call(args, "GET", "/admin/usage", params=params)["data"]
    if args.json:
        print(json.dumps(rows, indent=2))
    elif args.csv:
        sys.stdout.write(to_csv(rows, args.by))
    else:
        admin_client.print_table([{**r, args.by: r.get(args.by) or "-"} for r in rows], [args.by, *METRICS])
    return 0
