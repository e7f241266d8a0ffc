"""The simulated engine (`python -m gateway.sim`): vLLM's flags, health and metric names.

Runs with the gateway's own interpreter, so it works wherever the gateway is installed.
"""

from __future__ import annotations

import sys

from .base import Argv, Launcher, LaunchRequest

SERVED = ("--served-model-name",)


def _build(req: LaunchRequest, a: Argv) -> None:
    a.owned("--host", req.host)
    a.owned("--port", str(req.port))
    a.flag(SERVED, *req.served_names)
    a.flag("--model", req.spec.model)
    if req.api_key:
        a.flag("--api-key", req.api_key)
    if req.spec.sleep:
        a.flag("--enable-sleep-mode")
    if req.kind == "embedding":
        a.flag("--embedding")
    elif req.kind == "rerank":
        # vLLM 0.32's flags for a cross-encoder (the sim takes the same).
        a.flag("--runner", "pooling")
        a.flag("--convert", "classify")
    elif req.kind == "transcription":
        a.flag("--transcription")


LAUNCHER = Launcher(
    name="sim",
    program=(sys.executable, "-m", "gateway.sim"),
    build=_build,
    metric_running="vllm:num_requests_running",
    metric_waiting="vllm:num_requests_waiting",
    served_name_flags=SERVED,
    served_names_many=True,
    api_key_flags=("--api-key",),
    supports_sleep=True,
)
