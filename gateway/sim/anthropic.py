"""POST /v1/messages and POST /v1/messages/count_tokens (Anthropic Messages API, as vLLM serves it).

Mirrors vllm/entrypoints/anthropic/{api_router,serving,protocol}.py, which converts the request
to a chat completion on the same engine and converts the answer back:
- non-stream: `AnthropicMessagesResponse.model_dump(exclude_none=True)`:
  `{"id": "chatcmpl-...", "type": "message", "role": "assistant", "content": [...], "model",
  "stop_reason", ["stop_sequence",] "usage": {"input_tokens", "output_tokens"}}`; stop_reason:
  EOS -> end_turn, length -> max_tokens, a matched stop string -> stop_sequence (and only then
  the `stop_sequence` key, holding the string), abort -> null. Reasoning (`--reasoning field`)
  becomes a `thinking` block (random hex `signature`) before the `text` block; an empty
  completion is a single empty text block.
- stream: frames `event: <type>\\ndata: <json>\\n\\n`, fields dumped with exclude_unset:
  message_start (`message` with id, type, role, content [], model, stop_reason/stop_sequence
  null, usage {input_tokens: N, output_tokens: 0}), content_block_start, content_block_delta
  (thinking_delta / text_delta; a thinking block ends with a signature_delta),
  content_block_stop, message_delta ({"delta": {"stop_reason", "stop_sequence"}, "usage":
  {"input_tokens", "output_tokens"}}), message_stop. No ping events.
- usage with --enable-prompt-tokens-details (final usage only): input_tokens excludes
  cache_read_input_tokens (prefix-cache hits) and cache_creation_input_tokens (full prompt
  blocks newly cached), which are reported beside it.
- errors returned by the handler (unknown model 404, context length 400, engine failures) use
  Anthropic's shape `{"type": "error", "error": {"type": <vLLM error type>, "message"}}`;
  body validation errors do not (FastAPI answers them before the handler: OpenAI shape).
- a pooling sim (no Messages handler in vLLM) answers 501 {"type": "error", "error":
  {"type": "NotImplementedError", "message": "The model does not support Messages API"}}.
- count_tokens: `{"input_tokens": N, "context_management": {"original_input_tokens": N}}`,
  N = the prompt tokens the same messages would have in /v1/messages.
"""

from __future__ import annotations

import json
import os
from contextlib import aclosing
from typing import Any

import orjson

from gateway import tokens
from gateway.sim.errors import ApiError, not_supported
from gateway.sim.http import Connection, Request
from gateway.sim.protocol import GenRequest, Prompt, check_context, ensure_served
from gateway.sim.state import SimState
from gateway.sim.steps import Flush, Run, maybe_fail
from gateway.sim.textgen import ChoicePlan
from gateway.sim.validation import BodyError, load_body, opt_bool, opt_int, opt_number, opt_str_list, req_str

_ROLES = ("user", "assistant", "system")
_BLOCK_TYPES = ("text", "image", "tool_use", "tool_result", "tool_reference", "thinking", "redacted_thinking")


def stop_of(plan: ChoicePlan) -> tuple[str | None, str | None]:
    """(stop_reason, stop_sequence) as vLLM 0.32's _to_anthropic_stop_reason maps a finish: length ->
    max_tokens; a matched stop string -> stop_sequence + the string; EOS -> end_turn; abort -> None."""
    if plan.finish_reason == "length":
        return "max_tokens", None
    if plan.finish_reason not in ("stop", "tool_calls"):
        return None, None
    if plan.stop_reason is not None:
        return "stop_sequence", plan.stop_reason
    return "end_turn", None


def usage_of(run: Run, final: bool) -> dict[str, int]:
    """vLLM 0.32's _build_anthropic_usage. Only the final usage carries prompt_tokens_details (and
    only with --enable-prompt-tokens-details); then input_tokens excludes the cache reads and
    writes, which are reported beside it, so input + cache_read + cache_creation = the prompt."""
    out = {"input_tokens": run.prompt_tokens, "output_tokens": run.plan.completion_tokens if final else 0}
    if final and run.st.cfg.kv.enable_prompt_tokens_details:
        read, write = run.cached_tokens, run.cache_write_tokens
        out.update(input_tokens=max(0, run.prompt_tokens - read - write), cache_creation_input_tokens=write,
                   cache_read_input_tokens=read)
    return out


def anthropic_error(exc: ApiError) -> bytes:
    return orjson.dumps({"type": "error", "error": {"type": exc.type, "message": exc.message}})


def _blocks(value: Any, where: str) -> list[dict[str, Any]]:
    if not isinstance(value, list):
        raise BodyError(where, "union_type", "Input should be a valid string or a list of content blocks")
    for j, b in enumerate(value):
        if not isinstance(b, dict) or b.get("type") not in _BLOCK_TYPES:
            raise BodyError(f"{where}.{j}.type", "literal_error", f"Input should be one of {list(_BLOCK_TYPES)}")
    return value


def _block_text(b: dict[str, Any]) -> str:
    kind = b.get("type")
    if kind == "text":
        return str(b.get("text") or "")
    if kind == "tool_use":
        return str(b.get("name") or "") + json.dumps(b.get("input") or {})
    if kind == "tool_result":
        c = b.get("content")
        if isinstance(c, list):
            return "\n".join(str(x.get("text", "")) for x in c if isinstance(x, dict) and x.get("type") == "text")
        return "" if c is None else str(c)
    return ""


def to_chat(body: dict[str, Any]) -> tuple[list[dict[str, Any]], list[dict[str, Any]] | None]:
    """Anthropic messages/system/tools -> chat messages and tools, as vLLM converts them
    (system parts joined into one leading system message; tool results become tool messages)."""
    messages = body.get("messages")
    if messages is None:
        raise BodyError("messages", "missing", "Field required")
    if not isinstance(messages, list):
        raise BodyError("messages", "list_type", "Input should be a valid list")
    system_parts: list[str] = []
    system = body.get("system")
    if isinstance(system, str):
        system_parts.append(system)
    elif system is not None:
        system_parts += [_block_text(b) for b in _blocks(system, "system") if b.get("type") == "text"]
    chat: list[dict[str, Any]] = []
    for i, m in enumerate(messages):
        if not isinstance(m, dict):
            raise BodyError(f"messages.{i}", "model_type", "Input should be a valid dictionary or object")
        role = {"ctx": "user", "msg": "user"}.get(m.get("role"), m.get("role"))  # vLLM's role normalisation
        if role not in _ROLES:
            raise BodyError(f"messages.{i}.role", "literal_error", "Input should be 'user', 'assistant' or 'system'")
        content = m.get("content")
        if content is None:
            raise BodyError(f"messages.{i}.content", "missing", "Field required")
        if isinstance(content, str):
            text = content
        else:
            blocks = _blocks(content, f"messages.{i}.content")
            for b in blocks:
                if b.get("type") == "tool_result" and role == "user":
                    chat.append({"role": "tool", "content": _block_text(b)})
            text = "".join(_block_text(b) for b in blocks if not (b.get("type") == "tool_result" and role == "user"))
        if role == "system":
            system_parts.append(text)
        else:
            chat.append({"role": role, "content": text})
    if system_parts:
        chat.insert(0, {"role": "system", "content": "".join(system_parts)})
    tools = body.get("tools")
    openai_tools = None
    if tools is not None:
        if not isinstance(tools, list) or not all(
                isinstance(t, dict) and isinstance(t.get("name"), str) and isinstance(t.get("input_schema"), dict)
                for t in tools):
            raise BodyError("tools", "model_type", "Each tool needs a string name and an input_schema object")
        openai_tools = [{"type": "function", "function": {"name": t["name"], "description": t.get("description"),
                                                          "parameters": t["input_schema"]}} for t in tools] or None
    return chat, openai_tools


class MessagesApi:
    def __init__(self, st: SimState) -> None:
        self.st = st

    async def count_tokens(self, req: Request, conn: Connection) -> None:
        cfg = self.st.cfg
        try:
            body = load_body(req.body)
            model = req_str(body, "model", allow_empty=False)
            chat, tools = to_chat(body)
        except BodyError as exc:
            conn.send(exc.status, exc.body())
            return
        try:
            if cfg.is_pooling:
                raise _not_implemented()
            ensure_served(model, cfg)
        except ApiError as exc:
            conn.send(exc.status, anthropic_error(exc))
            return
        n = tokens.count_chat_prompt(chat, tools)
        conn.send(200, orjson.dumps({"input_tokens": n, "context_management": {"original_input_tokens": n}}))

    async def create(self, req: Request, conn: Connection) -> None:
        """Raises ApiError: BodyError stays OpenAI-shaped, the rest is re-raised Anthropic-shaped."""
        cfg = self.st.cfg
        body = load_body(req.body)
        model = req_str(body, "model", allow_empty=False)
        chat, tools = to_chat(body)
        max_tokens = opt_int(body, "max_tokens")
        if max_tokens is None:
            raise BodyError("max_tokens", "missing", "Field required")
        if max_tokens <= 0:
            raise BodyError("max_tokens", "value_error", "Value error, max_tokens must be positive")
        stop = opt_str_list(body, "stop_sequences") or []
        stream = opt_bool(body, "stream")
        for name in ("temperature", "top_p"):
            opt_number(body, name)
        try:
            if cfg.is_pooling:
                raise _not_implemented()
            key = orjson.dumps([chat, tools], option=orjson.OPT_SORT_KEYS)
            greq = GenRequest(kind="chat", model=model, stream=stream, max_tokens=max_tokens, stop=stop,
                              prompts=[Prompt(key=key, tokens=tokens.count_chat_prompt(chat, tools))])
            ensure_served(model, cfg)
            check_context(greq, cfg)
            maybe_fail(self.st)
        except BodyError:
            raise
        except ApiError as exc:
            raise _AnthropicError(exc) from None
        run = Run(self.st, greq, req, conn)
        msg_id = "chatcmpl-" + os.urandom(16).hex()  # vLLM reuses the chat completion's id
        if stream:
            await _stream(run, msg_id, cfg.model_name, conn)
            return
        await run.unary()
        plan = run.plan
        content: list[dict[str, Any]] = []
        reasoning = plan.text("reasoning")
        if reasoning:
            content.append({"type": "thinking", "thinking": reasoning, "signature": os.urandom(16).hex()})
        text = plan.text("content")
        if text:
            content.append({"type": "text", "text": text})
        if not content:  # vLLM 0.32: an empty completion is one empty text block, not []
            content.append({"type": "text", "text": ""})
        stop_reason, stop_sequence = stop_of(plan)
        body: dict[str, Any] = {"id": msg_id, "type": "message", "role": "assistant", "content": content,
                                "model": cfg.model_name, "stop_reason": stop_reason}
        if stop_sequence is not None:  # dumped with exclude_none
            body["stop_sequence"] = stop_sequence
        body["usage"] = usage_of(run, final=True)
        conn.send(200, orjson.dumps(body))


def _not_implemented() -> ApiError:
    return not_supported("Messages API")


class _AnthropicError(ApiError):
    """An ApiError whose body is Anthropic-shaped (what vLLM's translate_error_response sends)."""

    def __init__(self, exc: ApiError) -> None:
        super().__init__(exc.status, exc.message, exc.type, exc.param)

    def body(self) -> bytes:
        return anthropic_error(self)


def _message_start(run: Run, msg_id: str, model: str) -> bytes:
    return _frame("message_start", {"type": "message_start", "message": {
        "id": msg_id, "type": "message", "role": "assistant", "content": [], "model": model,
        "stop_reason": None, "stop_sequence": None, "usage": usage_of(run, final=False)}})


def _frame(kind: str, data: dict[str, Any]) -> bytes:
    return b"event: " + kind.encode() + b"\ndata: " + orjson.dumps(data) + b"\n\n"


async def _stream(run: Run, msg_id: str, model: str, conn: Connection) -> None:
    conn.start_stream()
    flush = Flush(conn)
    plan = run.plan
    block: str | None = None  # "thinking" | "text"
    index = -1
    signature = ""

    def stop_block() -> None:
        nonlocal block
        if block == "thinking":
            flush.add(_frame("content_block_delta", {"type": "content_block_delta", "index": index,
                                                     "delta": {"type": "signature_delta", "signature": signature}}))
        if block is not None:
            flush.add(_frame("content_block_stop", {"type": "content_block_stop", "index": index}))
        block = None

    async with aclosing(run.steps(flush)) as steps:
        async for step in steps:
            if step == 0:  # vLLM sends message_start on the first chunk (the role chunk at TTFT)
                flush.add(_message_start(run, msg_id, model))
            kind, piece, _ = plan.deltas[step]
            want = "thinking" if kind == "reasoning" else "text"
            if not piece:
                continue
            if block != want:
                stop_block()
                block, index = want, index + 1
                signature = os.urandom(16).hex()
                start = {"type": "thinking", "thinking": ""} if want == "thinking" else {"type": "text", "text": ""}
                flush.add(_frame("content_block_start", {"type": "content_block_start", "index": index,
                                                         "content_block": start}))
            delta = ({"type": "thinking_delta", "thinking": piece} if want == "thinking"
                     else {"type": "text_delta", "text": piece})
            flush.add(_frame("content_block_delta", {"type": "content_block_delta", "index": index, "delta": delta}))
    stop_block()
    plan = run.plan  # cut short if the engine aborted the request
    if index < 0:  # nothing generated (an engine-side abort before the first token)
        flush.add(_message_start(run, msg_id, model))
    stop_reason, stop_sequence = stop_of(plan)
    flush.add(_frame("message_delta", {"type": "message_delta",
                                       "delta": {"stop_reason": stop_reason, "stop_sequence": stop_sequence},
                                       "usage": usage_of(run, final=True)}))
    flush.add(_frame("message_stop", {"type": "message_stop"}))
    flush.write()
    conn.end_stream()
