"""Request bodies of the OpenAI endpoints: parsing, validation (vLLM-style 400s), prompt tokens.

Prompt token counts come from gateway.tokens, the same arithmetic as the gateway's
fallback metering, and are cached by the canonical JSON of the prompt because
tokenization dominates the cost of a request.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import orjson

from gateway import tokens
from gateway.sim.config import SimConfig
from gateway.sim.errors import ApiError, bad_request, validation_error

_CACHE_MAX = 8192
_prompt_cache: dict[bytes, int] = {}


def _cached_count(key: bytes, count: Any) -> int:
    n = _prompt_cache.get(key)
    if n is None:
        n = count()
        if len(_prompt_cache) >= _CACHE_MAX:
            _prompt_cache.clear()  # crude but O(1) amortised; benchmarks reuse few prompts
        _prompt_cache[key] = n
    return n


@dataclass
class Prompt:
    key: bytes  # canonical bytes of the prompt: seeds the deterministic output
    tokens: int
    text: str | None = None  # completions: the prompt text (for echo)
    ids: list[int] | None = None  # completions/embeddings given as token ids


@dataclass
class GenRequest:
    kind: str  # "chat" | "completion"
    model: str
    prompts: list[Prompt]
    stream: bool = False
    include_usage: bool = False
    continuous_usage: bool = False  # stream_options.continuous_usage_stats: usage on every chunk
    n: int = 1
    max_tokens: int | None = None
    stop: list[str] = field(default_factory=list)
    tools: list[dict[str, Any]] | None = None
    tool_choice: Any = None
    echo: bool = False

    @property
    def prompt_tokens(self) -> int:
        return sum(p.tokens for p in self.prompts)


@dataclass
class EmbedRequest:
    model: str
    inputs: list[Prompt]
    encoding_format: str = "float"
    dimensions: int | None = None


def load_json(body: bytes) -> dict[str, Any]:
    try:
        data = orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise validation_error(str(exc.pos), "json_invalid", "JSON decode error", "<dict of 0 items>") from None
    if not isinstance(data, dict):
        raise bad_request("Request body must be a JSON object")
    return data


def check_model(body: dict[str, Any], cfg: SimConfig) -> str:
    model = body.get("model")
    if model is None:
        raise bad_request("Field required: model", "model")
    if not isinstance(model, str):
        raise validation_error("model", "string_type", "Input should be a valid string", model)
    return model


def ensure_served(model: str, cfg: SimConfig) -> None:
    if model not in cfg.served_model_names:
        raise ApiError(404, f"The model `{model}` does not exist. Valid aliases: {', '.join(cfg.served_model_names)}.",
                       "NotFoundError", "model")


def _opt_int(body: dict[str, Any], name: str, minimum: int) -> int | None:
    v = body.get(name)
    if v is None:
        return None
    if isinstance(v, bool) or not isinstance(v, int):
        raise validation_error(name, "int_parsing", "Input should be a valid integer", v)
    if v < minimum:
        raise bad_request(f"{name} must be at least {minimum}, got {v}.", name)
    return v


def _opt_bool(body: dict[str, Any], name: str) -> bool:
    v = body.get(name)
    if v is None:
        return False
    if not isinstance(v, bool):
        raise validation_error(name, "bool_parsing", "Input should be a valid boolean", v)
    return v


def _opt_number(body: dict[str, Any], name: str) -> None:
    v = body.get(name)
    if v is not None and (isinstance(v, bool) or not isinstance(v, int | float)):
        raise validation_error(name, "float_parsing", "Input should be a valid number", v)


def _common(body: dict[str, Any], cfg: SimConfig, req: GenRequest, max_name: str) -> None:
    req.stream = _opt_bool(body, "stream")
    opts = body.get("stream_options")
    if opts is not None:
        if not isinstance(opts, dict):
            raise validation_error("stream_options", "dict_type", "Input should be a valid dictionary", opts)
        if not req.stream:
            raise bad_request("Stream options can only be defined when `stream=True`.", "stream_options")
        req.include_usage = _opt_bool(opts, "include_usage")
        # vLLM sends running usage only together with the usage chunk (include_usage).
        req.continuous_usage = req.include_usage and _opt_bool(opts, "continuous_usage_stats")
    req.n = _opt_int(body, "n", 1) or 1
    if req.n > 1024:
        raise bad_request("n must be at most 1024.", "n")
    req.max_tokens = _opt_int(body, max_name, 1)
    if max_name == "max_completion_tokens" and req.max_tokens is None:
        req.max_tokens = _opt_int(body, "max_tokens", 1)
    stop = body.get("stop")
    if isinstance(stop, str):
        req.stop = [stop]
    elif isinstance(stop, list) and all(isinstance(s, str) for s in stop):
        req.stop = [s for s in stop if s]
    elif stop is not None:
        raise bad_request("stop must be a string or a list of strings", "stop")
    for name in ("temperature", "top_p", "presence_penalty", "frequency_penalty"):
        _opt_number(body, name)
    _opt_int(body, "seed", -(2**63))
    ensure_served(req.model, cfg)
    check_context(req, cfg)


def check_context(req: GenRequest, cfg: SimConfig) -> None:
    """vLLM's context-length errors (it reports the first offending prompt)."""
    for p in req.prompts:
        if req.max_tokens is None:
            if p.tokens >= cfg.max_model_len:
                raise bad_request(
                    f"This model's maximum context length is {cfg.max_model_len} tokens. However, you "
                    f"requested {p.tokens} tokens in the messages, Please reduce the length of the messages.")
        elif p.tokens + req.max_tokens > cfg.max_model_len:
            raise bad_request(
                f"This model's maximum context length is {cfg.max_model_len} tokens. However, you requested "
                f"{p.tokens + req.max_tokens} tokens ({p.tokens} in the messages, {req.max_tokens} in the "
                "completion). Please reduce the length of the messages or completion.")


def parse_chat(raw: bytes, cfg: SimConfig) -> GenRequest:
    body = load_json(raw)
    model = check_model(body, cfg)
    messages = body.get("messages")
    if messages is None:
        raise bad_request("Field required: messages", "messages")
    if not isinstance(messages, list) or not messages:
        raise bad_request("messages must be a non-empty list of message objects", "messages")
    for i, m in enumerate(messages):
        if not isinstance(m, dict) or not isinstance(m.get("role"), str):
            raise bad_request(f"messages[{i}] must be an object with a string 'role'", "messages")
        content = m.get("content")
        if content is not None and not isinstance(content, str | list):
            raise bad_request(f"messages[{i}].content must be a string, a list of parts or null", "messages")
    tools = body.get("tools")
    if tools is not None:
        if not isinstance(tools, list) or not all(
                isinstance(t, dict) and isinstance(t.get("function"), dict)
                and isinstance(t["function"].get("name"), str) for t in tools):
            raise bad_request("tools must be a list of {type: function, function: {name, ...}}", "tools")
        tools = tools or None
    key = orjson.dumps([messages, tools], option=orjson.OPT_SORT_KEYS)
    n_tokens = _cached_count(key, lambda: tokens.count_chat_prompt(messages, tools))
    req = GenRequest(kind="chat", model=model, prompts=[Prompt(key=key, tokens=n_tokens)], tools=tools,
                     tool_choice=body.get("tool_choice"))
    _common(body, cfg, req, "max_completion_tokens")
    return req


def _is_ids(v: Any) -> bool:
    return isinstance(v, list) and bool(v) and all(isinstance(x, int) and not isinstance(x, bool) for x in v)


def _prompt_from(item: Any, what: str) -> Prompt:
    if isinstance(item, str):
        key = b"s" + item.encode()
        return Prompt(key=key, tokens=_cached_count(key, lambda: tokens.count_text(item)), text=item)
    if _is_ids(item):
        n_vocab = tokens.encoding().n_vocab
        if any(x < 0 or x >= n_vocab for x in item):
            raise bad_request(f"Token id out of vocabulary in {what}", what)
        return Prompt(key=b"t" + orjson.dumps(item), tokens=len(item), ids=item)
    raise bad_request(f"{what} must be a string, a list of strings, a list of token ids or a list of "
                      "lists of token ids", what)


def split_prompts(value: Any, what: str) -> list[Prompt]:
    """str | [str] | [int] | [[int]] -> one Prompt per prompt."""
    if value is None:
        raise bad_request(f"Field required: {what}", what)
    if isinstance(value, str) or _is_ids(value):
        return [_prompt_from(value, what)]
    if isinstance(value, list) and value:
        return [_prompt_from(item, what) for item in value]
    raise bad_request(f"{what} must be a non-empty string or list", what)


def parse_completion(raw: bytes, cfg: SimConfig) -> GenRequest:
    body = load_json(raw)
    model = check_model(body, cfg)
    prompts = split_prompts(body.get("prompt"), "prompt")
    req = GenRequest(kind="completion", model=model, prompts=prompts)
    req.echo = _opt_bool(body, "echo")
    if body.get("suffix") is not None:
        raise bad_request("suffix is not currently supported", "suffix")
    _opt_int(body, "logprobs", 0)
    if "max_tokens" not in body:
        body["max_tokens"] = 16  # OpenAI's legacy default for /v1/completions
    _common(body, cfg, req, "max_tokens")
    if req.echo:
        for p in prompts:
            if p.text is None and p.ids is not None:
                try:
                    p.text = tokens.decode(p.ids)
                except (KeyError, ValueError):
                    raise bad_request("prompt contains token ids that cannot be decoded", "prompt") from None
    return req


def parse_embedding(raw: bytes, cfg: SimConfig) -> EmbedRequest:
    body = load_json(raw)
    model = check_model(body, cfg)
    inputs = split_prompts(body.get("input"), "input")
    fmt = body.get("encoding_format")
    if fmt is None:
        fmt = "float"
    if fmt not in ("float", "base64"):
        raise bad_request("encoding_format must be 'float' or 'base64'", "encoding_format")
    dims = _opt_int(body, "dimensions", 1)
    ensure_served(model, cfg)
    if dims is not None and dims > cfg.embedding_dim:
        raise bad_request(f"dimensions must be at most {cfg.embedding_dim} for this model, got {dims}",
                          "dimensions")
    for p in inputs:
        if p.tokens > cfg.max_model_len:
            raise bad_request(
                f"This model's maximum context length is {cfg.max_model_len} tokens. However, you requested "
                f"{p.tokens} tokens in the input for embedding generation. Please reduce the length of the input.")
    return EmbedRequest(model=model, inputs=inputs, encoding_format=fmt, dimensions=dims)
