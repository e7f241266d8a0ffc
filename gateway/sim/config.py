"""Static configuration (from the command line) and runtime-mutable faults of the simulator."""

from __future__ import annotations

import argparse
import os
from dataclasses import asdict, dataclass, field, fields
from typing import Any

from gateway.sim.prefix_cache import DEFAULT_NUM_BLOCKS, KvConfig
from gateway.sim.sleep import SleepConfig

REASONING_MODES = ("none", "field", "think-tags", "r1")
REASONING_FIELDS = ("reasoning", "reasoning_content", "both")
TOOL_CALL_MODES = ("text", "always")
RUNNERS = ("generate", "pooling")  # vLLM's --runner (minus auto/draft)
CONVERTS = ("none", "embed", "classify")  # vLLM's --convert for pooling: embed model / cross-encoder


@dataclass
class Faults:
    """Failure injection knobs; replaced wholesale or patched via POST /sim/faults."""

    error_rate: float = 0.0  # probability that an inference request fails with error_status
    error_status: int = 500
    crash_after_requests: int | None = None  # os._exit(1) once this many inference requests completed
    crash_after_tokens: int | None = None  # os._exit(1) after a stream has sent this many tokens
    stall_after_tokens: int | None = None  # a stream stops sending after this many tokens (socket kept)
    # vLLM after its EngineCore died: every inference request gets the same 500 (the
    # real server then shuts down; the sim keeps answering, so a test can meet it).
    engine_dead: bool = False

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    def update(self, patch: Any) -> None:
        """Validate a JSON patch fully, then apply it (all or nothing). Raises ValueError."""
        if not isinstance(patch, dict):
            raise ValueError("faults must be a JSON object")
        known = {f.name for f in fields(self)}
        new = asdict(self)
        for key, value in patch.items():
            if key not in known:
                raise ValueError(f"unknown fault {key!r}; known: {sorted(known)}")
            new[key] = value
        rate = new["error_rate"]
        if isinstance(rate, bool) or not isinstance(rate, int | float) or not 0.0 <= rate <= 1.0:
            raise ValueError("error_rate must be a number in [0, 1]")
        status = new["error_status"]
        if isinstance(status, bool) or not isinstance(status, int) or not 400 <= status <= 599:
            raise ValueError("error_status must be an integer HTTP error status (400..599)")
        if not isinstance(new["engine_dead"], bool):
            raise ValueError("engine_dead must be true or false")
        for key in ("crash_after_requests", "crash_after_tokens", "stall_after_tokens"):
            v = new[key]
            if v is not None and (isinstance(v, bool) or not isinstance(v, int) or v < 0):
                raise ValueError(f"{key} must be null or a non-negative integer")
        for key, value in new.items():
            setattr(self, key, float(value) if key == "error_rate" else value)


@dataclass
class SimConfig:
    host: str = "127.0.0.1"
    port: int = 8000
    served_model_names: list[str] = field(default_factory=lambda: ["sim-model"])
    model: str = ""  # shown as `root` in /v1/models; defaults to the first served name
    max_num_seqs: int = 256
    max_model_len: int = 4096
    ttft_ms: float = 20.0
    itl_ms: float = 5.0
    jitter: float = 0.0
    prefill_ms_per_token: float = 0.0
    batch_slowdown: float = 1.0
    startup_seconds: float = 0.0
    embedding: bool = False
    embedding_dim: int = 384
    reasoning: str = "none"
    reasoning_field: str = "reasoning"
    tool_call_mode: str = "text"
    # vllm: vLLM 0.32's wire; llamacpp: llama-server's /v1/completions stream (its last chunk
    # carries `usage` even when not asked, and there is no separate usage chunk)
    dialect: str = "vllm"
    seed: int = 0
    api_key: str | None = None
    output_tokens: int = 64
    score: bool = False  # --runner pooling --convert classify: a cross-encoder (rerank/score only)
    transcription: bool = False  # a Whisper-like model: /v1/audio/transcriptions
    responses_store: bool = False  # vLLM's VLLM_ENABLE_RESPONSES_API_STORE=1
    accept_x_api_key: bool = False  # also take `x-api-key: KEY` (open vLLM PRs #51588/#51675)
    faults: Faults = field(default_factory=Faults)
    kv: KvConfig = field(default_factory=KvConfig)
    sleep: SleepConfig = field(default_factory=SleepConfig)

    def __post_init__(self) -> None:
        if not self.model:
            self.model = self.served_model_names[0]

    @property
    def is_pooling(self) -> bool:
        """A pooling model (embedding or cross-encoder): no text generation routes."""
        return self.embedding or self.score

    @property
    def model_name(self) -> str:
        """vLLM reports the first served name in every response and metric label."""
        return self.served_model_names[0]


def _non_negative(kind: type) -> Any:
    def parse(text: str) -> Any:
        value = kind(text)
        if value < 0:
            raise argparse.ArgumentTypeError(f"must be >= 0, got {text}")
        return value

    return parse


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {text}")
    return value


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m gateway.sim",
        description="Simulated vLLM OpenAI-compatible server: deterministic text, realistic timing, "
        "continuous batching, vLLM metrics and failure injection.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    g = p.add_argument_group("server (vLLM flag names)")
    g.add_argument("--host", default="127.0.0.1", help="address to bind")
    g.add_argument("--port", type=int, default=8000, help="port to bind (0 = any free port; logged)")
    g.add_argument("--served-model-name", nargs="+", default=["sim-model"], dest="served_model_name",
                   help="model names accepted in requests; responses always carry the first")
    g.add_argument("--model", default="", help="model path shown as `root` in /v1/models; empty = the first served name")
    g.add_argument("--max-num-seqs", type=_positive_int, default=256,
                   help="requests generating at once; the rest wait FIFO")
    g.add_argument("--max-model-len", type=_positive_int, default=4096, help="context length (prompt + output)")
    g.add_argument("--api-key", default=None, help="require 'Authorization: Bearer KEY' on /v1/*")
    g.add_argument("--seed", type=int, default=0, help="seed of the deterministic text and jitter")

    t = p.add_argument_group("timing")
    t.add_argument("--ttft-ms", type=_non_negative(float), default=20.0, help="time to first token (after queueing)")
    t.add_argument("--itl-ms", type=_non_negative(float), default=5.0, help="inter-token latency")
    t.add_argument("--jitter", type=_non_negative(float), default=0.0,
                   help="random +/- fraction applied to TTFT and ITL (0.1 = +/-10%%)")
    t.add_argument("--prefill-ms-per-token", type=_non_negative(float), default=0.0,
                   help="extra TTFT per prompt token")
    t.add_argument("--batch-slowdown", type=_non_negative(float), default=1.0,
                   help="ITL factor when all max-num-seqs slots are busy; linear in occupancy")
    t.add_argument("--startup-seconds", type=_non_negative(float), default=0.0,
                   help="answer 503 on /health and /v1/* for this long after start (model loading)")

    m = p.add_argument_group("model behaviour")
    m.add_argument("--output-tokens", type=_non_negative(int), default=64,
                   help="tokens generated when a request gives no max_tokens (finish_reason stop); "
                   "0 = the deterministic natural length (8..200 tokens)")
    m.add_argument("--embedding", action="store_true", help="serve as an embedding model (/v1/embeddings only)")
    m.add_argument("--runner", choices=RUNNERS, default="generate",
                   help="pooling: serve a pooling model; with --convert embed it is --embedding")
    m.add_argument("--convert", choices=CONVERTS, default="none",
                   help="with --runner pooling: embed (embeddings; score/rerank by cosine) or classify "
                   "(a cross-encoder: /rerank, /v1/rerank, /v2/rerank, /score, /v1/score only)")
    m.add_argument("--transcription", action="store_true",
                   help="serve as a speech-to-text model (/v1/audio/transcriptions)")
    m.add_argument("--responses-store", action="store_true",
                   help="keep /v1/responses results for GET /v1/responses/{id} and previous_response_id "
                   "(vLLM: VLLM_ENABLE_RESPONSES_API_STORE=1)")
    m.add_argument("--accept-x-api-key", action="store_true",
                   help="with --api-key, also accept `x-api-key: KEY` (Anthropic clients); vLLM up to at "
                   "least 0.26 accepts only `Authorization: Bearer`")
    m.add_argument("--embedding-dim", type=_positive_int, default=384, help="embedding vector size")
    m.add_argument("--reasoning", choices=REASONING_MODES, default="none",
                   help="field: reasoning in a delta/message field; think-tags: <think>R</think>\\n\\nA in "
                   "content; r1: R</think>\\n\\nA in content (no opening tag)")
    m.add_argument("--reasoning-field", choices=REASONING_FIELDS, default="reasoning",
                   help="field name(s) used by --reasoning field (vLLM>=0.16: reasoning; older: reasoning_content)")
    m.add_argument("--dialect", choices=("vllm", "llamacpp"), default="vllm",
                   help="llamacpp: /v1/completions streams end like llama-server's (usage on the last "
                   "chunk whether asked or not, no separate usage chunk)")
    m.add_argument("--tool-call-mode", choices=TOOL_CALL_MODES, default="text",
                   help="always: requests with tools get a tool call of the first (or chosen) tool")

    k = p.add_argument_group("KV cache and prefix caching (vLLM flag names)")
    k.add_argument("--block-size", type=_positive_int, default=16, help="tokens per KV block")
    k.add_argument("--num-gpu-blocks-override", type=_positive_int, default=DEFAULT_NUM_BLOCKS,
                   help="KV cache capacity in blocks; cached blocks beyond it are evicted LRU")
    k.add_argument("--enable-prefix-caching", action=argparse.BooleanOptionalAction, default=True,
                   help="reuse the KV blocks of shared prompt prefixes")
    k.add_argument("--enable-prompt-tokens-details", action="store_true",
                   help="report usage.prompt_tokens_details.cached_tokens (when non-zero)")

    s = p.add_argument_group("sleep mode and device memory (endpoints need env VLLM_SERVER_DEV_MODE=1)")
    s.add_argument("--enable-sleep-mode", action="store_true", help="allow POST /sleep and /wake_up")
    s.add_argument("--sleep-seconds", type=_non_negative(float), default=None,
                   help="time to fall asleep; default: the level-1 wake time")
    s.add_argument("--wake-seconds", type=_non_negative(float), default=None,
                   help="time to wake from level 1; default: 10%% of --startup-seconds")
    s.add_argument("--wake-seconds-level2", type=_non_negative(float), default=None,
                   help="time to wake from level 2 (weights reloaded); default: 50%% of --startup-seconds")
    s.add_argument("--device-dir", default=None,
                   help="directory of the per-device memory ledger shared by the sims of this machine "
                   "(default: env SIM_DEVICE_DIR; unset = no device accounting)")
    s.add_argument("--device-memory-gb", type=_non_negative(float), default=80.0, help="memory of each device")
    s.add_argument("--model-memory-gb", type=_non_negative(float), default=16.0,
                   help="model weights, split over the devices in CUDA_VISIBLE_DEVICES")
    s.add_argument("--gpu-memory-utilization", type=float, default=0.9,
                   help="share of each device the engine claims (weights + KV cache), as in vLLM")

    f = p.add_argument_group("faults (also settable at runtime via POST /sim/faults)")
    f.add_argument("--fault-error-rate", type=float, default=0.0, help="fraction of inference requests that fail")
    f.add_argument("--fault-error-status", type=int, default=500, help="HTTP status of injected failures")
    f.add_argument("--fault-engine-dead", action="store_true",
                   help="answer every inference request as vLLM does once its EngineCore died (500)")
    f.add_argument("--fault-crash-after-requests", type=_non_negative(int), default=None,
                   help="exit(1) right after the Nth inference request completes")
    f.add_argument("--fault-crash-after-tokens", type=_non_negative(int), default=None,
                   help="exit(1) abruptly once a stream has sent K tokens")
    f.add_argument("--fault-stall-after-tokens", type=_non_negative(int), default=None,
                   help="a stream stops sending after K tokens but keeps the connection open")
    return p


def config_from_args(argv: list[str] | None = None) -> SimConfig:
    parser = build_parser()
    a = parser.parse_args(argv)
    if not 0.0 < a.gpu_memory_utilization <= 1.0:
        parser.error("--gpu-memory-utilization must be in (0, 1]")
    faults = Faults()
    try:
        faults.update({
            "error_rate": a.fault_error_rate,
            "error_status": a.fault_error_status,
            "crash_after_requests": a.fault_crash_after_requests,
            "crash_after_tokens": a.fault_crash_after_tokens,
            "stall_after_tokens": a.fault_stall_after_tokens,
            "engine_dead": a.fault_engine_dead,
        })
    except ValueError as exc:
        parser.error(str(exc))
    if a.runner == "pooling" and a.convert == "none":
        parser.error("--runner pooling needs --convert embed or --convert classify")
    if a.runner != "pooling" and a.convert != "none":
        parser.error("--convert needs --runner pooling")
    if a.transcription and (a.embedding or a.runner == "pooling"):
        parser.error("--transcription is a generative model; it cannot be a pooling model too")
    return SimConfig(
        host=a.host,
        port=a.port,
        served_model_names=list(a.served_model_name),
        model=a.model,
        max_num_seqs=a.max_num_seqs,
        max_model_len=a.max_model_len,
        ttft_ms=a.ttft_ms,
        itl_ms=a.itl_ms,
        jitter=a.jitter,
        prefill_ms_per_token=a.prefill_ms_per_token,
        batch_slowdown=a.batch_slowdown,
        startup_seconds=a.startup_seconds,
        embedding=a.embedding or a.convert == "embed",
        score=a.convert == "classify",
        transcription=a.transcription,
        responses_store=a.responses_store,
        accept_x_api_key=a.accept_x_api_key,
        embedding_dim=a.embedding_dim,
        reasoning=a.reasoning,
        reasoning_field=a.reasoning_field,
        dialect=a.dialect,
        tool_call_mode=a.tool_call_mode,
        seed=a.seed,
        api_key=a.api_key,
        output_tokens=a.output_tokens,
        faults=faults,
        kv=KvConfig(block_size=a.block_size, num_gpu_blocks=a.num_gpu_blocks_override,
                    enable_prefix_caching=a.enable_prefix_caching,
                    enable_prompt_tokens_details=a.enable_prompt_tokens_details),
        sleep=SleepConfig(enabled=a.enable_sleep_mode, dev_mode=os.environ.get("VLLM_SERVER_DEV_MODE") == "1",
                          startup_seconds=a.startup_seconds, sleep_seconds=a.sleep_seconds,
                          wake_seconds=a.wake_seconds, wake_seconds_level2=a.wake_seconds_level2,
                          device_dir=a.device_dir or os.environ.get("SIM_DEVICE_DIR") or None,
                          device_memory_gb=a.device_memory_gb, model_memory_gb=a.model_memory_gb,
                          gpu_memory_utilization=a.gpu_memory_utilization),
    )
