"""LMDeploy: `lmdeploy serve api_server MODEL --server-name H --server-port P --model-name N ...`.

Keys go in `--api-keys` (plural: it accepts several). `--enable-metrics` exposes
`lmdeploy:num_requests_running/waiting`. Embeddings are not served by its turbomind
backend, so nothing is added for embedding pools.
"""

from __future__ import annotations

from .base import Argv, Launcher, LaunchRequest

SERVED = ("--model-name",)


def _build(req: LaunchRequest, a: Argv) -> None:
    a.positional(req.spec.model)
    a.owned("--server-name", req.host)
    a.owned("--server-port", str(req.port))
    a.flag(SERVED, req.served_names[0])
    if req.tensor_parallel:
        a.flag("--tp", str(req.tensor_parallel))
    if req.api_key:
        a.flag("--api-keys", req.api_key)
    a.flag("--enable-metrics")


LAUNCHER = Launcher(
    name="lmdeploy",
    program=("lmdeploy", "serve", "api_server"),
    build=_build,
    metric_running="lmdeploy:num_requests_running",
    metric_waiting="lmdeploy:num_requests_waiting",
    served_name_flags=SERVED,
    api_key_flags=("--api-keys",),
)
