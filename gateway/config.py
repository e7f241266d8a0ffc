"""The gateway's YAML config: schema, `${ENV}` interpolation, and errors that name the place.

One declaration per setting: the pydantic models below are the only place a setting,
its default and its limits are written. The CLI only overrides host/port.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

EngineName = Literal["vllm", "sglang", "lmdeploy", "llamacpp", "sim", "command"]
PoolKind = Literal["chat", "embedding", "rerank", "transcription"]
Reasoning = Literal["none", "passthrough", "deepseek_r1", "think_tags"]
BalancerName = Literal["cache_aware", "least_outstanding", "round_robin", "random", "speed_aware"]
StartMode = Literal["always", "on_demand"]
SwapPolicy = Literal["residency", "fcfs"]

_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._:/@+-]*$")


class ConfigError(Exception):
    """A config that cannot be served. `str()` lists every problem, one per line, with its path."""


class _Model(BaseModel):
    # Typos in a config must not be silently ignored: an unknown key is an error.
    model_config = ConfigDict(extra="forbid", frozen=True)


class ServerConfig(_Model):
    host: str = "127.0.0.1"
    port: int = Field(8000, ge=1, le=65535)
    max_body_bytes: int = Field(32 * 1024 * 1024, ge=1024)
    # Grace period for in-flight requests on shutdown and for draining removed backends.
    drain_seconds: float = Field(30.0, ge=0)
    access_log: bool = False  # one `gateway.access` log line per request
    # HTTP client to engines: our own keep-alive client (measured cheaper on the hot path)
    # or aiohttp's, kept as a fallback.
    upstream_client: Literal["raw", "aiohttp"] = "raw"
    # Client-side limits of our HTTP server (server/http.py). A client that sends a
    # request's headers slower than `header_timeout` (slowloris), pauses longer than
    # `body_timeout` inside a body, or reads nothing of a response for `write_timeout` is
    # disconnected; a disconnect cancels its request and frees its engine slot.
    header_timeout: float = Field(10.0, gt=0)
    body_timeout: float = Field(60.0, gt=0)  # longest pause between two pieces of a body
    write_timeout: float = Field(10.0, gt=0)  # longest a client may read nothing of a pending response
    # While a client does not read, the relay keeps reading the engine's stream into this
    # much memory per request, so the engine is never held back by one slow client.
    relay_buffer_bytes: int = Field(256 * 1024, ge=64 * 1024)
    # Past `relay_buffer_bytes`, a client that still reads (slower than its engine writes)
    # is waited for: the relay stops reading the engine until the client catches up. One
    # that takes nothing for this long past the bound is cut; short, because a client that
    # never reads reaches the bound within milliseconds and holds an engine slot meanwhile.
    backlog_timeout: float = Field(1.0, gt=0)
    # The kernel's send buffer per client connection (SO_SNDBUF; 0: the kernel's autotuning,
    # which lets one non-reading client absorb megabytes before the relay even notices).
    # Bounds kernel memory per slow client too; 256 KiB still fills a 20 MB/s x 50 ms path.
    client_send_buffer_bytes: int = Field(256 * 1024, ge=0)
    keep_alive_timeout: float = Field(75.0, gt=0)  # longer than typical client pools' idle timeout
    # A streamed request still waiting for a backend (a model loading) after this many
    # seconds gets its headers and an SSE comment every this many seconds, so clients and
    # proxies with a read timeout keep waiting (proxy/keepalive.py). None: off; errors after
    # the early 200 arrive as stream error events, not as HTTP statuses.
    stream_keepalive: float | None = Field(None, gt=0)
    max_header_bytes: int = Field(64 * 1024, ge=1024)


class KeyConfig(_Model):
    name: str = Field(min_length=1)
    key_sha256: str
    models: list[str] = Field(default_factory=lambda: ["*"])
    rpm: int | None = Field(None, ge=1)
    tpm: int | None = Field(None, ge=1)
    max_concurrent: int | None = Field(None, ge=1)
    # "5000000/month" | "100000/day" | plain integer (lifetime)
    budget: str | None = None

    @field_validator("budget")
    @classmethod
    def _budget(cls, v: str | None) -> str | None:
        if v is not None:
            from .ratelimit.budget import parse_budget  # lazy: ratelimit imports this module

            parse_budget(v)
        return v

    @field_validator("key_sha256")
    @classmethod
    def _hex(cls, v: str) -> str:
        v = v.strip().lower()
        if not re.fullmatch(r"[0-9a-f]{64}", v):
            raise ValueError("must be 64 hex characters (run `gateway keys hash` to make one)")
        return v


class AuthConfig(_Model):
    # "none" serves everyone without a key; it must be asked for explicitly.
    mode: Literal["keys", "none"] = "keys"
    admin_key: str | None = None
    admin_key_sha256: str | None = None
    keys: list[KeyConfig] = Field(default_factory=list)

    @model_validator(mode="after")
    def _unique(self) -> AuthConfig:
        names = [k.name for k in self.keys]
        dup = {n for n in names if names.count(n) > 1}
        if dup:
            raise ValueError(f"duplicate key names: {', '.join(sorted(dup))}")
        return self


class HealthConfig(_Model):
    path: str | None = None  # engine default when None
    interval: float = Field(5.0, gt=0)
    timeout: float = Field(5.0, gt=0)
    # A single slow probe under load must not eject a backend.
    failure_threshold: int = Field(3, ge=1)
    success_threshold: int = Field(1, ge=1)
    # How often the engine's own queue gauges (/metrics) are read for balancing: traffic
    # that did not come through this gateway shows only there. 0 turns it off.
    metrics_interval: float = Field(1.0, ge=0)
    # A spawned engine whose health check keeps failing this long is restarted (a hung
    # engine that still holds its port and devices); None: leave it UNHEALTHY.
    restart_after: float | None = Field(120.0, gt=0)


class SpawnConfig(_Model):
    """One engine process definition, started `replicas` times."""

    engine: EngineName
    model: str = Field(min_length=1)
    # Names the engine serves; defaults to the pool name. The first is what the engine reports.
    served_names: list[str] | None = None
    args: list[str] = Field(default_factory=list)
    # For engine=command: the argv, with {port}, {host}, {model}, {served_name} substituted.
    # For the other engines: replaces the program part of the launch (e.g.
    # ["/opt/sglang/bin/python", "-m", "sglang.launch_server"] instead of python3 -m ...).
    command: list[str] | None = None
    env: dict[str, str] = Field(default_factory=dict)
    unset_env: list[str] = Field(default_factory=list)
    replicas: int = Field(1, ge=1)
    gpus_per_replica: int = Field(0, ge=0)
    startup_timeout: float = Field(900.0, gt=0)
    health: HealthConfig = Field(default_factory=HealthConfig)
    api_key: str | None = None  # the engine's own key; defaults to the pool's api_key
    # `always`: started at boot. `on_demand`: started (or woken) by the first request that
    # needs it; the request waits in the pool's queue meanwhile.
    start: StartMode = "always"
    # Seconds without requests after which the engine sleeps (if `sleep`) or stops; None: never.
    idle_timeout: float | None = Field(None, gt=0)
    # vLLM sleep mode for idle and swap: 0/false = stop instead; 1/true = level 1 (weights to
    # CPU RAM, wakes in seconds); 2 = level 2 (weights dropped, reloaded from disk on wake).
    sleep: int = Field(0, ge=0, le=2)
    # How long a wake may take before the gateway restarts the engine instead.
    wake_timeout: float = Field(120.0, gt=0)
    # Explicit device ids instead of the next free ones. On-demand engines that list the same
    # devices take turns on them (engines.swap); sets gpus_per_replica.
    devices: list[str] | None = None

    @field_validator("sleep", mode="before")
    @classmethod
    def _sleep_level(cls, v: Any) -> Any:
        return int(v) if isinstance(v, bool) else v

    @field_validator("devices", mode="before")
    @classmethod
    def _device_strings(cls, v: Any) -> Any:
        return [str(x) for x in v] if isinstance(v, list) else v

    @model_validator(mode="before")
    @classmethod
    def _devices_set_count(cls, data: Any) -> Any:
        if isinstance(data, dict) and data.get("devices") and not data.get("gpus_per_replica"):
            data = {**data, "gpus_per_replica": len(data["devices"])}
        return data

    @field_validator("args", mode="before")
    @classmethod
    def _args_are_strings(cls, v: Any) -> Any:
        # YAML turns `--max-model-len: 8192` style numbers into ints; argv needs strings.
        if isinstance(v, list):
            return [a if isinstance(a, str) else _json_arg(a) for a in v]
        return v

    @field_validator("env", mode="before")
    @classmethod
    def _env_strings(cls, v: Any) -> Any:
        if isinstance(v, dict):
            return {str(k): ("" if x is None else str(x)) for k, x in v.items()}
        return v

    @model_validator(mode="after")
    def _command_needs_argv(self) -> SpawnConfig:
        if self.engine == "command" and not self.command:
            raise ValueError("engine 'command' needs a `command:` argv list")
        if self.devices is not None:
            if len(set(self.devices)) != len(self.devices) or not self.devices:
                raise ValueError("devices: list each device once")
            if self.gpus_per_replica != len(self.devices):
                raise ValueError("devices: gives the device count; gpus_per_replica must match or be left out")
            if self.replicas != 1:
                raise ValueError("devices: pins one engine to these devices, so replicas must be 1")
        if self.sleep and self.engine not in ("vllm", "sim"):
            raise ValueError(f"sleep: sleep mode is vLLM's (engines vllm, sim), not {self.engine}'s")
        return self

    @property
    def on_demand(self) -> bool:
        return self.start == "on_demand"


def _json_arg(v: Any) -> str:
    import json

    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, int | float):
        return str(v)
    return json.dumps(v, separators=(",", ":"))


class QueueConfig(_Model):
    max_size: int = Field(1024, ge=0)
    timeout: float = Field(30.0, gt=0)


class TimeoutConfig(_Model):
    connect: float = Field(5.0, gt=0)
    # Prefill of a long prompt on a busy engine can take minutes.
    first_byte: float = Field(600.0, gt=0)
    stream_idle: float = Field(300.0, gt=0)


_SPAWN_KEYS = set(SpawnConfig.model_fields)


class PrefixRoutingConfig(_Model):
    """Knobs of the cache_aware balancer (routing.policies.cache_aware)."""

    block_bytes: int = Field(512, ge=64)  # prompt bytes per hashed block (~128 tokens)
    ttl: float = Field(600.0, gt=0)  # seconds a block sent to a backend is assumed cached
    # Per backend KV cache in tokens, when the engine does not report it (vLLM does, in
    # vllm:cache_config_info); bounds the gateway's index of each backend.
    capacity_tokens: int = Field(262144, ge=1)
    # Safety net under the expected-delay score: never route for a cached prefix to a
    # backend whose load (requests in flight or queued) exceeds (1 + balance_rel) x the
    # pool's mean + balance_abs.
    balance_rel: float = Field(0.25, ge=0)
    balance_abs: float = Field(1.0, ge=0)
    # Prefill seconds per uncached prompt token until the pool's own TTFTs say otherwise
    # (the policy fits TTFT against uncached tokens as answers come back). The order of a
    # GPU serving an 8B model; a CPU engine is ~100x slower and is learnt within ~20 answers.
    prefill_ms_per_token: float = Field(0.15, gt=0)
    # Replicas sharing `redis_url` share conversation -> backend records (routing.shared_routes):
    # a follow-up turn reads its record through a local cache of `shared_local_ttl` seconds,
    # waiting at most `shared_timeout` seconds on Redis. Records expire after `ttl`.
    shared: bool = True
    shared_local_ttl: float = Field(1.0, ge=0)
    shared_timeout: float = Field(0.05, gt=0)


class PoolConfig(_Model):
    kind: PoolKind = "chat"
    aliases: list[str] = Field(default_factory=list)
    endpoints: list[str] = Field(default_factory=list)
    spawn: list[SpawnConfig] = Field(default_factory=list)
    api_key: str | None = None
    # The name engines of this pool serve, if it is neither the pool name nor discoverable
    # from their /v1/models (the gateway asks external endpoints at start-up).
    upstream_model: str | None = None
    max_concurrency: int = Field(64, ge=1)
    # speed_aware: shortest expected delay (queue x observed speed); equals shortest queue
    # until speeds are known. cache_aware: least predicted TTFT counting each engine's prefix
    # cache (issue #15; not the default until measured on real engines, see README). The
    # others are kept as baselines for the benchmarks.
    balancer: BalancerName = "speed_aware"
    prefix_routing: PrefixRoutingConfig = Field(default_factory=PrefixRoutingConfig)
    queue: QueueConfig = Field(default_factory=QueueConfig)
    timeouts: TimeoutConfig = Field(default_factory=TimeoutConfig)
    retries: int = Field(2, ge=0)
    reasoning: Reasoning = "none"
    # Embedding pools: whether the engine honours `dimensions`, and whether it can
    # encode base64 itself (if not, the gateway asks for floats and encodes).
    supports_dimensions: bool = False
    engine_base64: bool = True
    # When the gateway asks a stream for usage (to meter it), also ask for the running
    # total on every chunk (`stream_options.continuous_usage_stats`, vLLM and SGLang), so a
    # stream the client cuts short is metered with the engine's own figures. None: on when
    # every spawned engine is vllm/sglang, off otherwise (external endpoints may reject it).
    continuous_usage: bool | None = None
    # The model's tokenizer.json, for estimates of what no engine reported (a stream cut
    # short). None: `<model>/tokenizer.json` of the first spawned engine when the model is
    # a directory; otherwise the bundled cl100k.
    tokenizer: str | None = None

    @property
    def asks_continuous_usage(self) -> bool:
        if self.continuous_usage is not None:
            return self.continuous_usage
        return bool(self.spawn) and all(s.engine in ("vllm", "sglang") for s in self.spawn)

    @property
    def usage_counts_one_choice(self) -> bool:
        """llama.cpp's non-stream usage covers one choice when n > 1 (see proxy.n_usage)."""
        return bool(self.spawn) and all(s.engine == "llamacpp" for s in self.spawn)

    @property
    def tokenizer_path(self) -> str | None:
        if self.tokenizer is not None:
            return self.tokenizer
        if self.spawn and not self.spawn[0].model.endswith(".gguf"):
            return self.spawn[0].model.rstrip("/") + "/tokenizer.json"
        return None

    @model_validator(mode="before")
    @classmethod
    def _flat_spawn(cls, data: Any) -> Any:
        # Shorthand: a pool with `engine:` at its top level spawns that one engine spec.
        if isinstance(data, dict) and "engine" in data:
            data = dict(data)
            spec = {k: data.pop(k) for k in list(data) if k in _SPAWN_KEYS and k != "api_key"}
            if "spawn" in data:
                raise ValueError("give either `engine:` (one engine spec) or `spawn:` (a list), not both")
            data["spawn"] = [spec]
        return data

    @field_validator("endpoints")
    @classmethod
    def _urls(cls, v: list[str]) -> list[str]:
        out = []
        for u in v:
            if not re.match(r"^https?://[^/\s]+", u):
                raise ValueError(f"{u!r} is not an http(s) URL")
            out.append(u.rstrip("/"))
        return out

    @model_validator(mode="after")
    def _has_backends(self) -> PoolConfig:
        if not self.endpoints and not self.spawn:
            raise ValueError("a pool needs `endpoints:` or an engine to spawn (`engine:` / `spawn:`)")
        return self


class SwapConfig(_Model):
    """How on-demand engines that share devices take turns (engines/residency.py)."""

    # residency: the resident engine first serves what is queued for it and stays at least
    # `min_residency` seconds; fcfs: swap as soon as another pool's request arrives (baseline).
    policy: SwapPolicy = "residency"
    # A wake costs seconds and a cold start minutes: 30 s of service per turn keeps the
    # swap overhead a small share of the time even with two pools always asking.
    min_residency: float = Field(30.0, ge=0)
    # ...and at least this many times what the swap that ends its turn costs (measured: its
    # own last sleep or stop plus the wanted model's last wake or cold load), so the device's
    # time lost to swapping stays under 1/(1+cost_factor) of it whatever the arrival pattern:
    # making way for a 5 s cold load takes a longer turn than for a 0.3 s wake. 0: off.
    cost_factor: float = Field(2.0, ge=0)
    # The resident leaves only after a pause this long in its traffic (nothing queued or in
    # flight): its users are between conversations, not waiting for the next turn.
    idle_grace: float = Field(2.0, ge=0)
    # A waiting pool swaps in after this long even if the resident is still busy
    # (otherwise a busy resident would starve it).
    max_defer: float = Field(60.0, ge=0)


class EnginesConfig(_Model):
    """Process supervision settings shared by all spawned engines."""

    gpus: list[str] = Field(default_factory=list)
    # Every name gets the same device list (some stacks read XPU_VISIBLE_DEVICES too).
    device_env: list[str] = Field(default_factory=lambda: ["CUDA_VISIBLE_DEVICES"])
    port_range: tuple[int, int] = (20000, 29999)
    log_dir: str = "var/logs"
    log_max_bytes: int = Field(10 * 1024 * 1024, ge=1024)
    log_backups: int = Field(3, ge=0)
    stop_grace_seconds: float = Field(15.0, ge=0)
    restart_backoff_initial: float = Field(1.0, gt=0)
    restart_backoff_max: float = Field(300.0, gt=0)
    restart_stable_seconds: float = Field(60.0, gt=0)
    # Probing of external `endpoints:`; path None means GET {endpoint}/models.
    endpoint_health: HealthConfig = Field(default_factory=HealthConfig)
    swap: SwapConfig = Field(default_factory=SwapConfig)

    @field_validator("gpus", mode="before")
    @classmethod
    def _gpu_strings(cls, v: Any) -> Any:
        if isinstance(v, list):
            return [str(x) for x in v]
        return v

    @field_validator("device_env", mode="before")
    @classmethod
    def _one_or_many(cls, v: Any) -> Any:
        return [v] if isinstance(v, str) else v


class MetricsConfig(_Model):
    # Key names are bounded by the admin; a switch drops them for very many keys.
    key_label: bool = True


class MeteringConfig(_Model):
    enabled: bool = True
    # Group-commit window: a record reaches the store at most this long after its request
    # ended (plus one write), which bounds what a SIGKILL of the gateway loses.
    flush_interval: float = Field(0.1, gt=0)
    buffer_max: int = Field(100_000, ge=100)


class GatewayConfig(_Model):
    server: ServerConfig = Field(default_factory=ServerConfig)
    # Usage ledger: sqlite:///path.db (default) or redis://host:port/db.
    store: str = "sqlite:///var/usage.db"
    # Shared state for several replicas (rate limits, dynamic keys); defaults to `store` when that is Redis.
    redis: str | None = None
    auth: AuthConfig = Field(default_factory=AuthConfig)
    metering: MeteringConfig = Field(default_factory=MeteringConfig)
    metrics: MetricsConfig = Field(default_factory=MetricsConfig)
    engines: EnginesConfig = Field(default_factory=EnginesConfig)
    pools: dict[Annotated[str, Field(pattern=_NAME_RE.pattern)], PoolConfig] = Field(default_factory=dict)

    @field_validator("store")
    @classmethod
    def _store_url(cls, v: str) -> str:
        if not (v.startswith("sqlite:///") or v.startswith("redis://") or v.startswith("rediss://") or v == "memory://"):
            raise ValueError("must be sqlite:///PATH, redis://HOST:PORT/DB or memory://")
        return v

    @model_validator(mode="after")
    def _cross_checks(self) -> GatewayConfig:
        problems: list[str] = []
        seen: dict[str, str] = {}
        for name, pool in self.pools.items():
            for n in [name, *pool.aliases]:
                if n in seen and seen[n] != name:
                    problems.append(f"pools.{name}.aliases: {n!r} is already used by pool {seen[n]!r}")
                seen.setdefault(n, name)
        problems += _device_sharing_problems(self)
        pinned = {d for p in self.pools.values() for s in p.spawn for d in (s.devices or [])}
        wanted = len(pinned) + sum(
            s.replicas * s.gpus_per_replica for p in self.pools.values() for s in p.spawn if s.devices is None
        )
        if wanted > len(self.engines.gpus):
            detail = ", ".join(
                f"{n}: {s.replicas}x{s.gpus_per_replica}"
                for n, p in self.pools.items()
                for s in p.spawn
                if s.gpus_per_replica
            )
            problems.append(
                f"engines.gpus: pools ask for {wanted} devices ({detail}) but the inventory has "
                f"{len(self.engines.gpus)} ({', '.join(self.engines.gpus) or 'none'})"
            )
        lo, hi = self.engines.port_range
        if not (1024 <= lo <= hi <= 65535):
            problems.append("engines.port_range: must be [low, high] within 1024..65535")
        if self.auth.mode == "keys" and not self.auth.keys and not self.auth.admin_key and not self.auth.admin_key_sha256:
            problems.append("auth: no keys and no admin key; add keys or set `mode: none` explicitly")
        if problems:
            raise ValueError("\n".join(problems))
        return self

    @property
    def redis_url(self) -> str | None:
        if self.redis:
            return self.redis
        return self.store if self.store.startswith(("redis://", "rediss://")) else None


def _device_sharing_problems(cfg: GatewayConfig) -> list[str]:
    """Pinned device sets may overlap only between on-demand engines of different pools:
    those can take turns. An always-on engine never leaves its devices, so nothing could
    ever swap in beside it; two engines of one pool would have to swap against each other."""
    problems: list[str] = []
    inventory = set(cfg.engines.gpus)
    pinned = [(n, i, s) for n, p in cfg.pools.items() for i, s in enumerate(p.spawn) if s.devices]
    for n, i, s in pinned:
        missing = [d for d in s.devices or [] if d not in inventory]
        if missing:
            problems.append(f"pools.{n}.spawn.{i}.devices: {', '.join(missing)} not in engines.gpus")
    for a in range(len(pinned)):
        for b in range(a + 1, len(pinned)):
            (na, ia, sa), (nb, ib, sb) = pinned[a], pinned[b]
            shared = set(sa.devices or []) & set(sb.devices or [])
            if not shared:
                continue
            where = f"pools.{na}.spawn.{ia} and pools.{nb}.spawn.{ib} share devices {', '.join(sorted(shared))}"
            if na == nb:
                problems.append(f"{where}: engines of one pool cannot take turns")
            elif not (sa.on_demand and sb.on_demand):
                problems.append(f"{where}: only engines with `start: on_demand` can share devices")
    return problems


# --- loading ---------------------------------------------------------------------------------

_ENV_RE = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")


def interpolate(text: str, environ: dict[str, str] | None = None) -> str:
    """Replace `${VAR}` and `${VAR:-default}`; an unset variable without default is an error."""
    env = os.environ if environ is None else environ
    missing: list[str] = []

    def sub(m: re.Match[str]) -> str:
        name, default = m.group(1), m.group(2)
        if name in env:
            return env[name]
        if default is not None:
            return default
        missing.append(name)
        return ""

    out = _ENV_RE.sub(sub, text)
    if missing:
        raise ConfigError("environment variables not set: " + ", ".join(sorted(set(missing))))
    return out


def _format_errors(err: ValidationError) -> str:
    lines = []
    for e in err.errors():
        loc = ".".join(str(p) for p in e["loc"] if p not in ("function-after", "function-before"))
        msg = e["msg"]
        if msg.startswith("Value error, "):
            msg = msg[len("Value error, ") :]
        msg = msg.replace("Input should be greater than or equal to", "must be >=")
        msg = msg.replace("Input should be greater than", "must be >")
        msg = msg.replace("Extra inputs are not permitted", "unknown setting")
        for part in msg.split("\n"):
            if part.startswith(("pools.", "engines.", "auth")):
                lines.append(part)
            else:
                lines.append(f"{loc}: {part}" if loc else part)
    return "\n".join(lines)


def parse(data: Any) -> GatewayConfig:
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError("the config must be a YAML mapping at its top level")
    try:
        return GatewayConfig.model_validate(data)
    except ValidationError as e:
        msg = _format_errors(e)
        # Pools written in the flat `engine:` shorthand: report paths as the user wrote them.
        pools = data.get("pools")
        if isinstance(pools, dict):
            for name, pool in pools.items():
                if isinstance(pool, dict) and "engine" in pool:
                    msg = msg.replace(f"pools.{name}.spawn.0.", f"pools.{name}.")
        raise ConfigError(msg) from None


def loads(text: str, environ: dict[str, str] | None = None) -> GatewayConfig:
    try:
        data = yaml.safe_load(interpolate(text, environ))
    except yaml.YAMLError as e:
        raise ConfigError(f"invalid YAML: {e}") from None
    return parse(data)


def load(path: str | Path, environ: dict[str, str] | None = None) -> GatewayConfig:
    p = Path(path)
    try:
        text = p.read_text()
    except OSError as e:
        raise ConfigError(f"cannot read {p}: {e.strerror}") from None
    return loads(text, environ)
