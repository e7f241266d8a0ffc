"""Any other OpenAI-compatible server: the spec's `command` argv with placeholders filled.

Placeholders: {host} {port} {model} {served_name} {devices}. They are replaced literally
(not with str.format), so JSON-valued arguments with braces pass through untouched. The
spec's `args` follow the command. Health defaults to /health; no queue metrics are read.
"""

from __future__ import annotations

from .base import Argv, Launcher, LaunchRequest


def substitute(word: str, req: LaunchRequest) -> str:
    values = {
        "{host}": req.host,
        "{port}": str(req.port),
        "{model}": req.spec.model,
        "{served_name}": req.served_names[0],
        "{devices}": ",".join(req.devices),
    }
    for key, value in values.items():
        word = word.replace(key, value)
    return word


def _build(req: LaunchRequest, a: Argv) -> None:
    # The program part was taken verbatim from `command`; fill in its placeholders.
    a.rewrite_program(lambda w: substitute(w, req))


LAUNCHER = Launcher(name="command", program=(), build=_build)
