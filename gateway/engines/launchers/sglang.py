"""SGLang: `python3 -m sglang.launch_server --model-path M --served-model-name N --host H --port P ...`.

`--enable-metrics` is added because the queue gauges (`sglang:num_running_reqs`,
`sglang:num_queue_reqs`) only exist with it. `--served-model-name` takes one name; other
names are aliases in the gateway.
"""

from __future__ import annotations

from .base import Argv, Launcher, LaunchRequest

SERVED = ("--served-model-name",)


def _build(req: LaunchRequest, a: Argv) -> None:
    a.flag(("--model-path", "--model"), req.spec.model)
    a.flag(SERVED, req.served_names[0])
    a.owned("--host", req.host)
    a.owned("--port", str(req.port))
    if req.tensor_parallel:
        a.flag(("--tp-size", "--tp"), str(req.tensor_parallel))
    if req.api_key:
        a.flag("--api-key", req.api_key)
    a.flag("--enable-metrics")
    if req.kind == "embedding":
        a.flag("--is-embedding")


LAUNCHER = Launcher(
    name="sglang",
    program=("python3", "-m", "sglang.launch_server"),
    build=_build,
    metric_running="sglang:num_running_reqs",
    metric_waiting="sglang:num_queue_reqs",
    served_name_flags=SERVED,
    api_key_flags=("--api-key",),
)
