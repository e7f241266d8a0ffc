"""What every launcher shares: the request it is given, the launch it returns, argv building.

A launcher is pure: (pool, spec, port, devices) in, (argv, env, probe settings) out. The
supervisor does the side effects. That keeps every engine's command line golden-testable.

Rules common to all engines:
- the gateway owns host and port: user `args` that set them are refused (the engine would
  listen where the gateway never looks);
- every other flag we would add is skipped when the user's `args` already give it (in any
  spelling: `--tp`/`--tp-size`, `--max_num_seqs`/`--max-num-seqs`, `--flag=value`);
- user `args` follow ours verbatim, so later duplicates are impossible.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

from ...config import PoolKind, SpawnConfig

HOST = "127.0.0.1"  # engines bind to loopback only: vLLM's /metrics and /tokenize are unauthenticated
SECRET_FLAGS = frozenset({"--api-key", "--api-keys"})


class LaunchError(Exception):
    """A spec that cannot be launched as written (not worth retrying)."""


@dataclass(frozen=True)
class LaunchRequest:
    pool: str
    kind: PoolKind
    spec: SpawnConfig
    port: int
    devices: tuple[str, ...] = ()
    # The engine's own key: spec.api_key, else the pool's api_key.
    api_key: str | None = None
    device_env: tuple[str, ...] = ("CUDA_VISIBLE_DEVICES",)
    host: str = HOST

    @property
    def served_names(self) -> list[str]:
        return list(self.spec.served_names or [self.pool])

    @property
    def tensor_parallel(self) -> int:
        return self.spec.gpus_per_replica

    def program(self, default: Sequence[str]) -> list[str]:
        # `command:` on a non-command engine replaces the program (another venv, a wrapper).
        return list(self.spec.command or default)


@dataclass(frozen=True)
class Launch:
    argv: list[str]
    env: dict[str, str]
    health_path: str
    # Prometheus gauge names of the engine's own queue; None: do not scrape.
    metric_running: str | None
    metric_waiting: str | None
    served_names: list[str]
    api_key: str | None

    def display_argv(self) -> list[str]:
        """argv for logs and status, with secret values masked."""
        out: list[str] = []
        hide = False
        for a in self.argv:
            name, eq, _ = a.partition("=")
            if hide:
                out.append("***")
                hide = False
            elif _norm(name) in SECRET_FLAGS and eq:
                out.append(f"{name}=***")
            else:
                out.append(a)
                hide = _norm(a) in SECRET_FLAGS
        return out


def _norm(flag: str) -> str:
    # argparse-based engines accept --max_num_seqs for --max-num-seqs.
    return flag.split("=", 1)[0].replace("_", "-") if flag.startswith("-") else flag


class Argv:
    """Builds `program + our flags + user args`, skipping flags the user already gave."""

    def __init__(self, program: Sequence[str], user_args: Sequence[str]) -> None:
        self._head = list(program)
        self._user = list(user_args)
        self._user_flags = {_norm(a) for a in self._user if a.startswith("-")}

    def user_has(self, *names: str) -> bool:
        return any(_norm(n) in self._user_flags for n in names)

    def user_values(self, *names: str, many: bool = False) -> list[str] | None:
        """Values the user gave to a flag (`--f v`, `--f=v`, or `--f v1 v2` when many)."""
        wanted = {_norm(n) for n in names}
        for i, a in enumerate(self._user):
            if not a.startswith("-") or _norm(a) not in wanted:
                continue
            if "=" in a:
                return [a.split("=", 1)[1]]
            vals: list[str] = []
            for v in self._user[i + 1 :]:
                if v.startswith("-") and len(v) > 1 and not v[1].isdigit():
                    break
                vals.append(v)
                if not many:
                    break
            return vals
        return None

    def positional(self, value: str) -> None:
        self._head.append(value)

    def flag(self, names: str | tuple[str, ...], *values: str) -> None:
        """Add `names[0] values...` unless the user's args set any spelling of it."""
        names = (names,) if isinstance(names, str) else names
        if not self.user_has(*names):
            self._head += [names[0], *values]

    def owned(self, names: str | tuple[str, ...], *values: str) -> None:
        """A flag only the gateway may set (host, port)."""
        names = (names,) if isinstance(names, str) else names
        if self.user_has(*names):
            raise LaunchError(f"args must not set {names[0]}: the gateway assigns it")
        self._head += [names[0], *values]

    def rewrite_program(self, fn: Callable[[str], str]) -> None:
        self._head = [fn(w) for w in self._head]

    def done(self) -> list[str]:
        return [*self._head, *self._user]


BuildArgv = Callable[[LaunchRequest, Argv], None]


@dataclass(frozen=True)
class Launcher:
    """One engine kind. `build` appends the engine's flags; the rest is shared."""

    name: str
    program: tuple[str, ...]
    build: BuildArgv
    health_path: str = "/health"
    metric_running: str | None = None
    metric_waiting: str | None = None
    # Flag spellings used to find names / key the user put in `args` themselves.
    served_name_flags: tuple[str, ...] = ()
    served_names_many: bool = False
    api_key_flags: tuple[str, ...] = ()
    # vLLM's sleep mode: `/sleep`, `/wake_up` and `/is_sleeping` exist only with
    # VLLM_SERVER_DEV_MODE=1 in the engine's environment.
    supports_sleep: bool = False

    def launch(self, req: LaunchRequest, base_env: Mapping[str, str] | None = None) -> Launch:
        argv = Argv(req.program(self.program), req.spec.args)
        served = req.served_names
        user_served = argv.user_values(*self.served_name_flags, many=self.served_names_many)
        if user_served:
            served = user_served
        api_key = req.api_key
        if api_key is None and self.api_key_flags:
            given = argv.user_values(*self.api_key_flags)
            api_key = given[0] if given else None
        self.build(req, argv)
        env = build_env(req, os.environ if base_env is None else base_env)
        if req.spec.sleep and self.supports_sleep:
            env.setdefault("VLLM_SERVER_DEV_MODE", "1")
        return Launch(
            argv=argv.done(),
            env=env,
            health_path=req.spec.health.path or self.health_path,
            metric_running=self.metric_running,
            metric_waiting=self.metric_waiting,
            served_names=served,
            api_key=api_key,
        )


def build_env(req: LaunchRequest, base: Mapping[str, str]) -> dict[str, str]:
    """Inherited env minus `unset_env`, plus device lists, plus the spec's `env`.

    `unset_env` removes inherited variables only; a name the spec's `env` sets is kept.
    The spec's env is applied last, so a user who writes CUDA_VISIBLE_DEVICES (or any
    device variable) explicitly keeps their value over the gateway's assignment.
    """
    env = {k: v for k, v in base.items() if k not in set(req.spec.unset_env)}
    # Python engines write to a pipe: unbuffered output keeps the log and ring buffer live.
    env["PYTHONUNBUFFERED"] = "1"
    if req.spec.gpus_per_replica > 0:
        for name in req.device_env:
            env[name] = ",".join(req.devices)
    env.update(req.spec.env)
    return env
