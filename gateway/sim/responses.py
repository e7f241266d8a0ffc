"""POST /v1/responses (OpenAI Responses API), GET /v1/responses/{id}, POST /v1/responses/{id}/cancel.

Shapes mirror vLLM's `OpenAIServingResponses` (vllm/entrypoints/openai/responses/serving.py,
protocol.py, simple_streaming_events.py, api_router.py):
- non-stream: `ResponsesResponse.model_dump()` — every field present, nulls included;
  `status` "completed", or "incomplete" with `incomplete_details {"reason":"max_output_tokens"}`
  when the length limit cut the output; usage `{input_tokens, input_tokens_details:
  {cached_tokens}, output_tokens, output_tokens_details: {reasoning_tokens}, total_tokens}`.
- stream: SSE frames `event: <type>\\ndata: <json>\\n\\n` (no `[DONE]`), sequence numbers from 0:
  response.created, response.in_progress, then per output item output_item.added,
  content_part.added, *.delta..., *.done, content_part.done, output_item.done, and finally
  response.completed carrying the full response with usage. Reasoning (`--reasoning field`)
  is a `reasoning` item with `reasoning_text` parts before the `message` item.
- store: vLLM keeps responses only when started with VLLM_ENABLE_RESPONSES_API_STORE=1 (here
  `--responses-store`) AND the request has `store` (default true); otherwise `store` is
  silently ignored. GET of an unknown id -> 404 "Response with id '...' not found." (type
  invalid_request_error, param response_id); cancel of a finished (synchronous) response ->
  400 "Cannot cancel a synchronous response.". `previous_response_id` must name a stored
  response (else that 404); its conversation is prepended to the prompt, as vLLM's msg_store.
- a pooling sim answers 501 NotImplementedError "The model does not support Responses API".
- `background` is not simulated: without the store it gets vLLM's 400, with it a 400 saying so.
"""

from __future__ import annotations

import os
import time
from collections import OrderedDict
from contextlib import aclosing
from typing import Any

import orjson

from gateway import tokens
from gateway.sim.errors import ApiError, not_supported
from gateway.sim.http import Connection, Request
from gateway.sim.protocol import GenRequest, Prompt, ensure_served
from gateway.sim.state import SimState
from gateway.sim.steps import Flush, Run, maybe_fail
from gateway.sim.textgen import ChoicePlan
from gateway.sim.validation import BodyError, load_body, opt_bool, opt_int, opt_number, opt_str

STORE_MAX = 10_000  # vLLM's store is unbounded (a documented leak); a test sim should not grow forever


def _not_found(response_id: str) -> ApiError:
    return ApiError(404, f"Response with id '{response_id}' not found.", "invalid_request_error", "response_id")


class ResponseStore:
    """Stored responses and the conversation (messages) that produced each, newest last."""

    def __init__(self) -> None:
        self.bodies: OrderedDict[str, dict[str, Any]] = OrderedDict()
        self.messages: dict[str, list[dict[str, Any]]] = {}

    def put(self, body: dict[str, Any], messages: list[dict[str, Any]]) -> None:
        rid = body["id"]
        self.bodies[rid] = body
        self.messages[rid] = messages
        while len(self.bodies) > STORE_MAX:
            old, _ = self.bodies.popitem(last=False)
            self.messages.pop(old, None)


def _input_messages(value: Any) -> list[dict[str, Any]]:
    """Responses `input` -> chat-style messages (what vLLM's construct_input_messages renders)."""
    if isinstance(value, str):
        return [{"role": "user", "content": value}]
    if not isinstance(value, list):
        raise BodyError("input", "union_type", "Input should be a valid string or a list of input items")
    out: list[dict[str, Any]] = []
    for i, item in enumerate(value):
        if not isinstance(item, dict):
            raise BodyError(f"input.{i}", "model_type", "Input should be a valid dictionary or object")
        kind = item.get("type", "message")
        if kind == "message" or ("role" in item and "type" not in item):
            role, content = item.get("role"), item.get("content")
            if not isinstance(role, str) or not isinstance(content, str | list):
                raise BodyError(f"input.{i}", "missing", "Field required: role and content")
            out.append({"role": role, "content": content})
        elif kind == "function_call_output":
            out.append({"role": "tool", "content": str(item.get("output", ""))})
        elif kind == "function_call":
            out.append({"role": "assistant", "content": f"{item.get('name', '')}{item.get('arguments', '')}"})
        elif kind == "reasoning":
            continue  # earlier reasoning is not re-rendered into the prompt
        else:
            raise BodyError(f"input.{i}.type", "literal_error", f"Input item type {kind!r} is not supported")
    return out


class ResponsesApi:
    def __init__(self, st: SimState) -> None:
        self.st = st
        self.store = ResponseStore()

    def route(self, path: str) -> dict[str, Any] | None:
        """The endpoints of the /v1/responses/{id}[/cancel] paths (matched by prefix)."""
        rest = path[len("/v1/responses/"):]
        if not path.startswith("/v1/responses/") or not rest:
            return None
        if rest.endswith("/cancel") and "/" not in rest[: -len("/cancel")]:
            return {"POST": self.cancel}
        if "/" not in rest:
            return {"GET": self.retrieve}
        return None

    # ---- retrieve / cancel ----------------------------------------------------------
    async def retrieve(self, req: Request, conn: Connection) -> None:
        rid = req.path[len("/v1/responses/"):]
        body = self.store.bodies.get(rid)
        if body is None:
            err = _not_found(rid)
            conn.send(err.status, err.body())
            return
        conn.send(200, orjson.dumps(body))

    async def cancel(self, req: Request, conn: Connection) -> None:
        rid = req.path[len("/v1/responses/"):-len("/cancel")]
        body = self.store.bodies.get(rid)
        err = _not_found(rid) if body is None else ApiError(
            400, "Cannot cancel a synchronous response.", "invalid_request_error", "response_id")
        conn.send(err.status, err.body())  # only background responses are cancellable; none here

    # ---- create -------------------------------------------------------------------------
    async def create(self, req: Request, conn: Connection) -> None:
        """Raises ApiError for the caller to render (OpenAI error shape)."""
        cfg = self.st.cfg
        if cfg.is_pooling:
            raise not_supported("Responses API")
        body = load_body(req.body)
        model = opt_str(body, "model") or cfg.model_name  # vLLM: model is optional here
        if "input" not in body:
            raise BodyError("input", "missing", "Field required")
        if body.get("prompt") is not None:
            raise BodyError("", "value_error", "Value error, prompt template is not supported")
        instructions = opt_str(body, "instructions")
        max_out = opt_int(body, "max_output_tokens", 1)
        stream = opt_bool(body, "stream")
        store = opt_bool(body, "store", default=True) and cfg.responses_store
        background = opt_bool(body, "background")
        temperature = opt_number(body, "temperature")
        top_p = opt_number(body, "top_p")
        tools = body.get("tools") or []
        if not isinstance(tools, list):
            raise BodyError("tools", "list_type", "Input should be a valid list")
        prev_id = opt_str(body, "previous_response_id")
        messages = _input_messages(body["input"])
        ensure_served(model, cfg)
        if background:
            if not cfg.responses_store or not opt_bool(body, "store", default=True):
                raise ApiError(400, "This vLLM engine does not support `store=True` and therefore does not support "
                               "the background mode. To enable these features, set the environment variable "
                               "`VLLM_ENABLE_RESPONSES_API_STORE=1` when launching the vLLM server.",
                               "invalid_request_error", "background")
            raise ApiError(400, "background mode is not simulated by gateway.sim", "invalid_request_error",
                           "background")
        history: list[dict[str, Any]] = []
        if prev_id is not None:
            if prev_id not in self.store.messages:
                raise _not_found(prev_id)
            history = self.store.messages[prev_id]
        if instructions is not None:
            messages = [{"role": "system", "content": instructions}, *messages]
        conversation = history + messages
        key = orjson.dumps([conversation, tools], option=orjson.OPT_SORT_KEYS)
        n_prompt = tokens.count_chat_prompt(conversation, tools or None)
        if n_prompt >= cfg.max_model_len:
            raise ApiError(400, f"The engine prompt length {n_prompt} exceeds the max_model_len {cfg.max_model_len}. "
                           "Please reduce prompt.", "invalid_request_error", "input")
        room = cfg.max_model_len - n_prompt
        greq = GenRequest(kind="chat", model=model, prompts=[Prompt(key=key, tokens=n_prompt)],
                          max_tokens=min(max_out, room) if max_out is not None else None)
        maybe_fail(self.st)
        run = Run(self.st, greq, req, conn)
        shell = {
            "id": "resp_" + os.urandom(16).hex(), "created_at": int(time.time()), "incomplete_details": None,
            "instructions": instructions, "metadata": body.get("metadata"), "model": cfg.model_name,
            "object": "response", "output": [], "parallel_tool_calls": body.get("parallel_tool_calls", True),
            "temperature": 1.0 if temperature is None else temperature, "tool_choice": body.get("tool_choice", "auto"),
            "tools": tools, "top_p": 1.0 if top_p is None else top_p, "background": False,
            "max_output_tokens": greq.max_tokens if greq.max_tokens is not None else room,
            "max_tool_calls": body.get("max_tool_calls"), "previous_response_id": prev_id, "prompt": None,
            "reasoning": body.get("reasoning"), "service_tier": body.get("service_tier") or "auto",
            "status": "in_progress", "text": body.get("text"), "top_logprobs": body.get("top_logprobs") or 0,
            "truncation": body.get("truncation") or "disabled", "usage": None, "user": body.get("user"),
            "presence_penalty": body.get("presence_penalty"), "frequency_penalty": body.get("frequency_penalty"),
            "kv_transfer_params": None, "ec_transfer_params": None, "input_messages": None, "output_messages": None,
        }
        ids = {"reasoning": "rs_" + os.urandom(16).hex(), "content": "msg_" + os.urandom(16).hex()}
        if stream:
            final = await _stream(run, shell, ids, conn)
        else:
            await run.unary()
            final = _finished(shell, run, ids)
            conn.send(200, orjson.dumps(final))
        if store:
            answer = run.plan.text("content") or ""
            self.store.put(final, conversation + [{"role": "assistant", "content": answer}])


def _items(plan: ChoicePlan, ids: dict[str, str]) -> list[dict[str, Any]]:
    """The completed output items (vLLM's _make_response_output_items)."""
    items: list[dict[str, Any]] = []
    reasoning = plan.text("reasoning")
    if reasoning is not None:
        items.append(_reasoning_item(ids["reasoning"], reasoning, None))
    content = plan.text("content")
    if content is not None:
        items.append(_message_item(ids["content"], content, "completed"))
    return items


def _reasoning_item(item_id: str, text: str | None, status: str | None) -> dict[str, Any]:
    return {"id": item_id, "summary": [], "type": "reasoning",
            "content": None if text is None else [{"text": text, "type": "reasoning_text"}],
            "encrypted_content": None, "status": status}


def _message_item(item_id: str, text: str | None, status: str) -> dict[str, Any]:
    content = [] if text is None else [{"annotations": [], "text": text, "type": "output_text", "logprobs": None}]
    return {"id": item_id, "content": content, "role": "assistant", "status": status, "type": "message"}


def _finished(shell: dict[str, Any], run: Run, ids: dict[str, str]) -> dict[str, Any]:
    """The final response; cached_tokens is what the prefix cache served (vLLM reports it here
    unconditionally, unlike chat's prompt_tokens_details)."""
    plan, prompt_tokens = run.plan, run.prompt_tokens
    reasoning_tokens = sum(n for kind, _, n in plan.deltas if kind == "reasoning")
    status = "incomplete" if plan.finish_reason == "length" else "completed"
    return {**shell, "output": _items(plan, ids), "status": status,
            "incomplete_details": {"reason": "max_output_tokens"} if status == "incomplete" else None,
            "usage": {"input_tokens": prompt_tokens,
                      "input_tokens_details": {"cached_tokens": run.cached_tokens,
                                               "cache_write_tokens": run.cache_write_tokens,
                                               "input_tokens_per_turn": [prompt_tokens],
                                               "cached_tokens_per_turn": [run.cached_tokens]},
                      "output_tokens": plan.completion_tokens,
                      "output_tokens_details": {"reasoning_tokens": reasoning_tokens, "tool_output_tokens": 0,
                                                "output_tokens_per_turn": [plan.completion_tokens],
                                                "tool_output_tokens_per_turn": [0]},
                      "total_tokens": prompt_tokens + plan.completion_tokens}}


class _Events:
    """SSE frames with consecutive sequence numbers."""

    def __init__(self, flush: Flush) -> None:
        self.flush = flush
        self.seq = 0

    def emit(self, kind: str, **fields: Any) -> None:
        data = orjson.dumps({"type": kind, "sequence_number": self.seq, **fields})
        self.seq += 1
        self.flush.add(b"event: " + kind.encode() + b"\ndata: " + data + b"\n\n")


async def _stream(run: Run, shell: dict[str, Any], ids: dict[str, str], conn: Connection) -> dict[str, Any]:
    conn.start_stream()  # headers at once, as vLLM's StreamingResponse
    flush = Flush(conn)
    ev = _Events(flush)
    ev.emit("response.created", response=shell)
    ev.emit("response.in_progress", response=shell)
    flush.write()
    plan = run.plan
    open_kind: str | None = None
    out_index = -1
    text = ""

    def close() -> None:
        nonlocal open_kind
        if open_kind is None:
            return
        item_id = ids[open_kind]
        where = {"item_id": item_id, "output_index": out_index, "content_index": 0}
        if open_kind == "reasoning":
            ev.emit("response.reasoning_text.done", text=text, **where)
            ev.emit("response.content_part.done", part={"text": text, "type": "reasoning_text"}, **where)
            ev.emit("response.output_item.done", output_index=out_index,
                    item=_reasoning_item(item_id, text, "completed"))
        else:
            ev.emit("response.output_text.done", text=text, logprobs=[], **where)
            ev.emit("response.content_part.done", part={"annotations": [], "text": text, "type": "output_text",
                                                        "logprobs": None}, **where)
            ev.emit("response.output_item.done", output_index=out_index,
                    item=_message_item(item_id, text, "completed"))
        open_kind = None

    async with aclosing(run.steps(flush)) as steps:
        async for step in steps:
            kind, piece, _ = plan.deltas[step]
            if kind != open_kind:
                close()
                open_kind, out_index, text = kind, out_index + 1, ""
                where = {"item_id": ids[kind], "output_index": out_index, "content_index": 0}
                if kind == "reasoning":
                    ev.emit("response.output_item.added", output_index=out_index,
                            item=_reasoning_item(ids[kind], None, "in_progress"))
                    ev.emit("response.content_part.added", part={"text": "", "type": "reasoning_text"}, **where)
                else:
                    ev.emit("response.output_item.added", output_index=out_index,
                            item=_message_item(ids[kind], None, "in_progress"))
                    ev.emit("response.content_part.added", part={"annotations": [], "text": "",
                                                                  "type": "output_text", "logprobs": []}, **where)
            text += piece
            delta_kind = "response.reasoning_text.delta" if kind == "reasoning" else "response.output_text.delta"
            extra = {} if kind == "reasoning" else {"logprobs": []}
            ev.emit(delta_kind, item_id=ids[kind], output_index=out_index, content_index=0, delta=piece, **extra)
    close()
    final = _finished(shell, run, ids)
    ev.emit("response.completed", response=final)
    flush.write()
    conn.end_stream()
    return final
