"""vLLM: `vllm serve MODEL --served-model-name N... --host H --port P [--tensor-parallel-size K] [--api-key KEY]`.

Metrics are on by default. Embedding mode is left to the user's args (`--task embed` on
older versions, `--runner pooling` on newer): guessing the flag would break one of them.
A `rerank` pool gets `--runner pooling --convert classify` unless its args set `--task` or
`--runner`; a `transcription` pool needs no flag (vLLM picks the task from the model).
"""

from __future__ import annotations

from .base import Argv, Launcher, LaunchRequest

SERVED = ("--served-model-name",)


def _build(req: LaunchRequest, a: Argv) -> None:
    a.positional(req.spec.model)
    a.flag(SERVED, *req.served_names)  # nargs="+": every name is listed by /v1/models
    a.owned("--host", req.host)
    a.owned("--port", str(req.port))
    if req.tensor_parallel:
        a.flag(("--tensor-parallel-size", "-tp"), str(req.tensor_parallel))
    if req.api_key:
        a.flag("--api-key", req.api_key)
    if req.spec.sleep:
        a.flag("--enable-sleep-mode")
    if req.kind == "rerank" and not a.user_has("--task", "--runner"):
        # A cross-encoder for /rerank and /score (vLLM >= 0.11 flags; older ones: `--task score`).
        a.flag("--runner", "pooling")
        a.flag("--convert", "classify")


LAUNCHER = Launcher(
    name="vllm",
    program=("vllm", "serve"),
    build=_build,
    metric_running="vllm:num_requests_running",
    metric_waiting="vllm:num_requests_waiting",
    served_name_flags=SERVED,
    served_names_many=True,
    api_key_flags=("--api-key",),
    supports_sleep=True,
)
