"""llama.cpp server: `llama-server -m FILE --alias N --host H --port P [--api-key KEY] --metrics`.

No tensor-parallel flag: devices reach it only through the device env variables.
`/health` answers 503 while the model loads, then 200.
"""

from __future__ import annotations

from .base import Argv, Launcher, LaunchRequest

SERVED = ("--alias", "-a")


def _build(req: LaunchRequest, a: Argv) -> None:
    a.flag(("-m", "--model"), req.spec.model)
    a.flag(SERVED, req.served_names[0])
    a.owned("--host", req.host)
    a.owned("--port", str(req.port))
    if req.api_key:
        a.flag("--api-key", req.api_key)
    a.flag("--metrics")
    if req.kind == "embedding":
        a.flag(("--embedding", "--embeddings"))


LAUNCHER = Launcher(
    name="llamacpp",
    program=("llama-server",),
    build=_build,
    metric_running="llamacpp:requests_processing",
    metric_waiting="llamacpp:requests_deferred",
    served_name_flags=SERVED,
    api_key_flags=("--api-key",),
)
