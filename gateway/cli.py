"""`gateway` command line: serve, check, keys, and the admin commands of each subsystem.

Subsystems add their commands through `register(subparsers, keys_subparsers)` in their
own `cli` module, so this file does not grow with every feature.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable, Sequence

from . import config as config_mod

Handler = Callable[[argparse.Namespace], int]


def _cmd_serve(args: argparse.Namespace) -> int:
    from .server.run import serve

    try:
        cfg = config_mod.load(args.config)
    except config_mod.ConfigError as e:
        print(f"gateway: invalid config {args.config}:\n{e}", file=sys.stderr)
        return 2
    return serve(cfg, config_path=args.config, host=args.host, port=args.port)


def _cmd_check(args: argparse.Namespace) -> int:
    try:
        cfg = config_mod.load(args.config)
    except config_mod.ConfigError as e:
        print(f"{args.config}: invalid\n{e}", file=sys.stderr)
        return 1
    spawned = sum(s.replicas for p in cfg.pools.values() for s in p.spawn)
    external = sum(len(p.endpoints) for p in cfg.pools.values())
    print(f"{args.config}: ok ({len(cfg.pools)} pools, {spawned} spawned engines, {external} external endpoints)")
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="gateway", description="OpenAI-compatible gateway for self-hosted engines")
    sub = p.add_subparsers(dest="command", required=True)

    s = sub.add_parser("serve", help="run the gateway (spawns the configured engines)")
    s.add_argument("--config", "-c", default=os.environ.get("GATEWAY_CONFIG", "config/demo.yaml"))
    s.add_argument("--host", help="override server.host")
    s.add_argument("--port", type=int, help="override server.port")
    s.set_defaults(func=_cmd_serve)

    c = sub.add_parser("check", help="validate a config file and exit non-zero on problems")
    c.add_argument("--config", "-c", required=True)
    c.set_defaults(func=_cmd_check)

    k = sub.add_parser("keys", help="API keys")
    ksub = k.add_subparsers(dest="keys_command", required=True)

    from .engines import cli as engines_cli
    from .keys import cli as keys_cli
    from .metering import cli as metering_cli

    keys_cli.register(ksub)
    engines_cli.register(sub, ksub)
    metering_cli.register(sub)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    func: Handler = args.func
    return func(args)


if __name__ == "__main__":
    sys.exit(main())
