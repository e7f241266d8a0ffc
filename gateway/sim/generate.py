"""Chat and legacy completions: plan the output, hold a batch slot for the simulated time,
and answer in vLLM's JSON or SSE shapes.

Timing: TTFT = queue wait + ttft + the prefills booked ahead of this one (the engine
computes one prompt at a time: `Scheduler.book_prefill`) + prefill_ms_per_token *
uncached prompt tokens (the prefix cache serves the rest); then one step per ITL (times the batch slowdown, with
jitter). Deadlines are absolute, so timer lateness does not accumulate over long streams.

Admission: wait while the engine sleeps, then for a batch slot, then for KV blocks. An
engine-side abort (sleep with mode=abort) ends the request early with finish_reason
`abort` and what was generated so far.
"""

from __future__ import annotations

import asyncio
import dataclasses
import os
import time
from typing import Any

import orjson

from gateway.sim import textgen
from gateway.sim.admission import Seat, header_ms
from gateway.sim.http import Connection, Request
from gateway.sim.prefix_cache import output_ids
from gateway.sim.protocol import GenRequest
from gateway.sim.state import SimState
from gateway.sim.textgen import ChoicePlan

_DONE = b"data: [DONE]\n\n"


def _pick_tool(req: GenRequest) -> dict[str, Any] | None:
    if not req.tools or req.tool_choice == "none":
        return None
    choice = req.tool_choice
    if isinstance(choice, dict) and isinstance(choice.get("function"), dict):
        wanted = choice["function"].get("name")
        for tool in req.tools:
            if tool["function"].get("name") == wanted:
                return tool
    return req.tools[0]


def build_plans(st: SimState, req: GenRequest, http: Request) -> list[ChoicePlan]:
    """One plan per choice; choice index = prompt index * n + j, as vLLM numbers them."""
    cfg = st.cfg
    tool = _pick_tool(req) if req.kind == "chat" and cfg.tool_call_mode == "always" else None
    reasoning = cfg.reasoning if req.kind == "chat" else "none"
    forced_split = http.headers.get("x-sim-think-split")
    plans: list[ChoicePlan] = []
    for prompt in req.prompts:
        room = cfg.max_model_len - prompt.tokens
        if forced_split in ("split", "merged"):
            split = forced_split == "split"
        else:
            split = textgen.stable_hash(cfg.seed, prompt.key, "think-split") % 2 == 0
        for j in range(req.n):
            key = textgen.stable_hash(cfg.seed, prompt.key, j)
            if req.max_tokens is None:
                natural = cfg.output_tokens or textgen.natural_length(key)
                limit = room
            else:
                natural = textgen.natural_length(key)
                limit = min(req.max_tokens, room)
            if tool is not None:
                call_id = "chatcmpl-tool-" + os.urandom(16).hex()
                plans.append(textgen.plan_tool_call(key, tool, limit, call_id, reasoning))
            else:
                plans.append(textgen.plan_text(key, limit, natural, req.stop, reasoning, split))
    return plans


# vLLM 0.32 puts "vllm-<version>-<hash>" on non-stream bodies and on finish/usage chunks.
SYSTEM_FINGERPRINT = "vllm-0.32.0-5e1f1a9b"
# Null members real vLLM 0.32 adds to non-stream answers (clients may read them).
_BODY_NULLS = {"prompt_logprobs": None, "prompt_token_ids": None, "prompt_text": None,
               "kv_transfer_params": None, "ec_transfer_params": None, "metrics": None}
_MESSAGE_NULLS = {"refusal": None, "annotations": None, "audio": None, "function_call": None}


def _usage(prompt_tokens: int, plans: list[ChoicePlan], cached_tokens: int | None, reasoning: bool,
           stream: bool = False) -> dict[str, Any]:
    """cached_tokens is None unless --enable-prompt-tokens-details; vLLM then reports it only
    when non-zero (`if enable_prompt_tokens_details and num_cached_tokens`). With a reasoning
    parser vLLM adds `completion_tokens_details.reasoning_tokens`; stream usage has no
    `prompt_tokens_details` key unless it is set."""
    completion = sum(p.completion_tokens for p in plans)
    usage: dict[str, Any] = {"prompt_tokens": prompt_tokens, "total_tokens": prompt_tokens + completion,
                             "completion_tokens": completion}
    details = {"cached_tokens": cached_tokens} if cached_tokens else None
    if details is not None or not stream:
        usage["prompt_tokens_details"] = details
    if reasoning:
        usage["completion_tokens_details"] = {"reasoning_tokens": sum(p.reasoning_tokens for p in plans)}
    return usage


def _cut(plan: ChoicePlan, steps: int) -> ChoicePlan:
    """What a choice had produced after `steps` steps, finished by an engine-side abort."""
    call = plan.tool_call
    if call is not None:
        call_steps = steps - len(plan.deltas)  # the reasoning before the call comes first
        pieces = call.argument_pieces[:max(0, call_steps - 1)]
        call = dataclasses.replace(call, arguments="".join(pieces), argument_pieces=pieces) if call_steps > 0 else None
    return dataclasses.replace(plan, deltas=plan.deltas[:steps], completion_tokens=plan.tokens_in_first(steps),
                               finish_reason="abort", stop_reason=None, tool_call=call)


class Generation(Seat):
    """One chat/completions request in flight."""

    def __init__(self, st: SimState, req: GenRequest, http: Request, conn: Connection) -> None:
        self.st = st
        self.req = req
        self.conn = conn
        self.plans = build_plans(st, req, http)
        self.chat = req.kind == "chat"
        self.id = ("chatcmpl-" if self.chat else "cmpl-") + os.urandom(16).hex()
        self.created = int(time.time())
        cfg = st.cfg
        self.ttft_fixed_ms = header_ms(http, "x-sim-ttft-ms", cfg.ttft_ms)
        self._init_seat()
        self.itl_s = header_ms(http, "x-sim-itl-ms", cfg.itl_ms) / 1000.0
        self.steps = max((p.steps for p in self.plans), default=0)
        self.llamacpp = cfg.dialect == "llamacpp"
        self._llamacpp_completion = not self.chat and self.llamacpp
        # vLLM 0.32's null members on stream chunks (llama-server has none): the chat role
        # chunk carries prompt_token_ids/prompt_text, other chat choices token_ids, every
        # completions choice prompt_token_ids and token_ids.
        nulls = not self.llamacpp
        self._chunk_nulls = {"token_ids": None} if nulls and self.chat else {}
        if nulls and not self.chat:
            self._chunk_nulls = {"prompt_token_ids": None, "token_ids": None}
        self._first_nulls = b',"prompt_token_ids":null,"prompt_text":null' if nulls and self.chat else b""
        self.loop = asyncio.get_running_loop()
        self.t_arrive = self.loop.time()

    # ---- what the KV cache sees (admission and release: `Seat`) ------------------------
    def _prompt_tokens(self) -> int:
        return self.req.prompt_tokens

    def _kv_shape(self) -> tuple[list[list[int]], list[int]]:
        n = self.req.n
        prompts = [self.st.prompt_ids.get(p.key, p.ids) for p in self.req.prompts]
        outputs = [sum(pl.completion_tokens for pl in self.plans[i * n:(i + 1) * n]) for i in range(len(prompts))]
        return prompts, outputs

    def _cached_outputs(self) -> list[list[int]]:
        n = self.req.n
        outputs = []
        for i in range(len(self.req.prompts)):
            plan = self.plans[i * n]
            text = plan.text("content") if plan.tool_call is None else None
            eos = plan.finish_reason == "stop" and plan.stop_reason is None
            outputs.append(output_ids(text, eos) if text else [])
        return outputs

    def _usage(self, plans: list[ChoicePlan], stream: bool = False) -> dict[str, Any]:
        if self.llamacpp:
            # llama-server: always `prompt_tokens_details.cached_tokens` (its prompt cache),
            # never `completion_tokens_details`.
            completion = sum(p.completion_tokens for p in plans)
            return {"completion_tokens": completion, "prompt_tokens": self.req.prompt_tokens,
                    "total_tokens": self.req.prompt_tokens + completion,
                    "prompt_tokens_details": {"cached_tokens": self.llama_cached}}
        details = self.cached_tokens if self.st.cfg.kv.enable_prompt_tokens_details else None
        reasoning = self.chat and self.st.cfg.reasoning == "field"
        return _usage(self.req.prompt_tokens, plans, details, reasoning, stream)

    # ---- accounting -------------------------------------------------------------
    @property
    def prompt_tokens_counted(self) -> int:
        """What vllm:prompt_tokens_total adds: the prompt once per sequence (n=2: twice)."""
        return self.req.prompt_tokens * self.req.n

    @property
    def llama_cached(self) -> int:
        """llama.cpp's `cached_tokens`: the reused prefix, always re-evaluating the last prompt token."""
        return max(0, min(self.cached_tokens, self.req.prompt_tokens - 1))

    def _count_prompt(self) -> None:
        m = self.st.metrics
        m.prompt_tokens += self.prompt_tokens_counted
        if self.llamacpp:
            m.prompt_tokens_cached += self.llama_cached * self.req.n

    def _prefilled(self) -> None:
        m = self.st.metrics
        self._count_prompt()
        m.ttft.observe(self.loop.time() - self.t_arrive)

    def _done(self, reasons: list[str]) -> None:
        self.st.metrics.finished(reasons, self.loop.time() - self.t_arrive)

    # ---- non-stream -----------------------------------------------------------------
    async def run_unary(self) -> None:
        st, sched = self.st, self.st.sched
        finished = False
        ttft = itl = 0.0
        t0 = self.t_arrive
        try:
            await self._admit()
            t0 = self.loop.time()
            ttft = sched.jittered(self.ttft_s)
            itl = self.itl_s * sched.slowdown()
            if sched.jitter > 0.0:
                total = ttft + sum(sched.jittered(itl) for _ in range(max(0, self.steps - 1)))
            else:
                total = ttft + itl * max(0, self.steps - 1)
            await self._sleep_until(t0 + total)
            finished = True
        finally:
            if self.acquired:
                self._leave(finished and not self.engine_aborted)
                if not finished:  # aborted mid-generation: count what had been produced by now
                    elapsed = self.loop.time() - t0
                    if elapsed >= ttft:
                        k = self.steps if itl <= 0.0 else 1 + int((elapsed - ttft) / itl)
                        st.metrics.generation_tokens += sum(p.tokens_in_first(k) for p in self.plans)
                        self._count_prompt()
                        st.metrics.ttft.observe(t0 - self.t_arrive + ttft)
            if not finished:
                self._done(["abort"] * len(self.plans))
        if self.engine_aborted:
            elapsed = self.loop.time() - t0
            k = 0 if elapsed < ttft else self.steps if itl <= 0.0 else 1 + int((elapsed - ttft) / itl)
            cut = [_cut(p, k) for p in self.plans]
            if k > 0:
                self._count_prompt()
                st.metrics.ttft.observe(t0 - self.t_arrive + ttft)
            st.metrics.generation_tokens += sum(p.completion_tokens for p in cut)
            self._done(["abort"] * len(cut))
            self.conn.send(200, orjson.dumps(self._unary_body(cut)))
            return
        self._count_prompt()
        st.metrics.generation_tokens += sum(p.completion_tokens for p in self.plans)
        st.metrics.ttft.observe(t0 - self.t_arrive + ttft)
        self._done([p.finish_reason for p in self.plans])
        self.conn.send(200, orjson.dumps(self._unary_body(self.plans)))

    def _unary_body(self, plans: list[ChoicePlan]) -> dict[str, Any]:
        choices: list[dict[str, Any]] = []
        for i, plan in enumerate(plans):
            if self.chat:
                choices.append({"index": i, "message": self._message(plan), "logprobs": None,
                                "finish_reason": plan.finish_reason, "stop_reason": plan.stop_reason,
                                "token_ids": None, "routed_experts": None})
            else:
                text = plan.text("content") or ""
                if self.req.echo:
                    text = (self.req.prompts[i // self.req.n].text or "") + text
                choices.append({"index": i, "text": text, "logprobs": None, "finish_reason": plan.finish_reason,
                                "stop_reason": plan.stop_reason, "prompt_logprobs": None,
                                "token_ids": None, "routed_experts": None})
        return {"id": self.id, "object": "chat.completion" if self.chat else "text_completion",
                "created": self.created, "model": self.st.cfg.model_name, "choices": choices,
                "service_tier": None, "system_fingerprint": SYSTEM_FINGERPRINT,
                "usage": self._usage(plans), **_BODY_NULLS}

    def _message(self, plan: ChoicePlan) -> dict[str, Any]:
        """vLLM 0.32's message: null extras, no `tool_calls` key unless there is a call."""
        cfg = self.st.cfg
        content = plan.text("content")
        msg: dict[str, Any] = {"role": "assistant"}
        if plan.tool_call is not None:
            msg["content"] = None
        elif cfg.reasoning == "field":
            msg["content"] = content  # None when the budget ran out while reasoning, as vLLM
        else:
            msg["content"] = content or ""
        msg.update(_MESSAGE_NULLS)
        if plan.tool_call is not None:
            call = plan.tool_call
            msg["tool_calls"] = [
                {"id": call.id, "type": "function", "function": {"name": call.name, "arguments": call.arguments}}]
        if cfg.reasoning == "field":
            reasoning = plan.text("reasoning")
            for name in _reasoning_fields(cfg.reasoning_field):
                msg[name] = reasoning
        return msg

    # ---- stream -------------------------------------------------------------------------
    async def run_stream(self) -> None:
        st, sched, conn = self.st, self.st.sched, self.conn
        head = orjson.dumps({"id": self.id, "object": "chat.completion.chunk" if self.chat else "text_completion",
                             "created": self.created, "model": st.cfg.model_name})[:-1] + b',"choices":['
        self._head = head
        # vLLM 0.32 puts no `"usage": null` on content chunks (OpenAI does).
        self._tail = b"]}\n\n"
        self._generated = 0  # tokens sent so far, for continuous_usage_stats
        conn.start_stream()  # headers go out at once, as vLLM's StreamingResponse does
        finished = False
        plans = self.plans
        try:
            await self._admit()
            deadline = self.loop.time() + sched.jittered(self.ttft_s)
            await self._sleep_until(deadline)
            events: list[bytes] = []
            if self.engine_aborted:  # dropped before its first token
                plans = [_cut(p, 0) for p in self.plans]
                events += [self._finish_event(i, p, None) for i, p in enumerate(plans)]
            else:
                self._prefilled()
                done = await self._emit_steps(deadline)
                if self.engine_aborted and done < self.steps:
                    plans = [_cut(p, done) if done < p.steps else p for p in self.plans]
                    events += [self._finish_event(i, p, None) for i, p in enumerate(plans) if done < self.plans[i].steps]
            if self.req.include_usage and not self._llamacpp_completion:
                events.append(b"data: " + head + b'],"usage":' + orjson.dumps(self._usage(plans, stream=True))
                              + b',"system_fingerprint":"' + SYSTEM_FINGERPRINT.encode() + b'"}\n\n')
            events.append(_DONE)
            conn.write_chunk(b"".join(events))
            conn.end_stream()
            finished = True
        finally:
            self._leave(finished and not self.engine_aborted)
            self._done([p.finish_reason for p in plans] if finished else ["abort"] * len(self.plans))

    async def _emit_steps(self, deadline: float) -> int:
        """Send the token steps; returns how many were sent (fewer after an engine abort)."""
        st, conn, plans = self.st, self.conn, self.plans
        faults = st.cfg.faults
        echo = [p.text or "" for p in self.req.prompts for _ in range(self.req.n)] if self.req.echo else None
        events: list[bytes] = []
        if self.chat:
            for i in range(len(plans)):
                events.append(self._event({"index": i, "delta": {"role": "assistant", "content": ""},
                                           "logprobs": None, "finish_reason": None}, first=True))
        for i, plan in enumerate(plans):
            if plan.steps == 0:
                events.append(self._finish_event(i, plan, echo))
        sent = 0
        for step in range(self.steps):
            for i, plan in enumerate(plans):
                if step >= plan.steps:
                    continue
                stall = faults.stall_after_tokens
                if stall is not None and sent >= stall:
                    conn.write_chunk(b"".join(events))
                    await asyncio.Event().wait()  # hung engine: hold the slot until the client leaves
                made = plan.step_tokens(step)
                self._generated += made
                last = step == plan.steps - 1
                ev = self._delta_event(i, plan, step, echo, last)
                if ev is not None:
                    events.append(ev)
                sent += 1
                st.metrics.generation_tokens += made  # counted as sent: aborts keep them
                if last and self.chat:  # completions: finish_reason rode on the last text chunk
                    events.append(self._finish_event(i, plan, None))
                crash = faults.crash_after_tokens
                if crash is not None and sent >= crash:
                    conn.write_chunk(b"".join(events))
                    st.crash(conn, f"crash_after_tokens={crash}")
                    await asyncio.Event().wait()
            if step < self.steps - 1:
                deadline += st.sched.jittered(self.itl_s * st.sched.slowdown())
                if deadline <= self.loop.time() and len(events) < 64:
                    continue  # zero/overdue ITL: coalesce events into one write, as they are "produced" now
            conn.write_chunk(b"".join(events))
            events = []
            await conn.drain()
            await self._sleep_until(deadline)
            if self.engine_aborted:
                return step + 1
        if events:
            conn.write_chunk(b"".join(events))
        return self.steps

    def _event(self, choice: dict[str, Any], fingerprint: bool = False, first: bool = False) -> bytes:
        tail = self._tail
        if self.req.continuous_usage:
            # Running totals on every chunk (the role chunk: 0 completion tokens), as vLLM.
            p, g = self.req.prompt_tokens, self._generated
            tail = b'],"usage":' + orjson.dumps({"prompt_tokens": p, "total_tokens": p + g,
                                                 "completion_tokens": g}) + b"}\n\n"
        if first and self._first_nulls:
            tail = tail[:-3] + self._first_nulls + b"}\n\n"
        if fingerprint:
            tail = tail[:-3] + b',"system_fingerprint":"' + SYSTEM_FINGERPRINT.encode() + b'"}\n\n'
        return b"data: " + self._head + orjson.dumps(choice) + tail

    def _delta_event(self, i: int, plan: ChoicePlan, step: int, echo: list[str] | None,
                     last: bool = False) -> bytes | None:
        if not self.chat:
            text = plan.deltas[step][1]
            if echo is not None and step == 0:
                text = echo[i] + text
            if last and self._llamacpp_completion:
                # llama-server: the text chunk, then "" + finish_reason + usage (asked for or not)
                fin = orjson.dumps({"index": i, "text": "", "logprobs": None, "finish_reason": plan.finish_reason})
                usage = orjson.dumps(self._usage(self.plans, stream=True))
                return (self._event({"index": i, "text": text, "logprobs": None, "finish_reason": None})
                        + b"data: " + self._head + fin + b'],"usage":' + usage + b"}\n\n")
            if last:  # vLLM: finish_reason rides on the last content chunk of completions
                return self._event({"index": i, "text": text, "logprobs": None,
                                    "finish_reason": plan.finish_reason, "stop_reason": plan.stop_reason,
                                    **self._chunk_nulls},
                                   fingerprint=not self.req.include_usage)
            return self._event({"index": i, "text": text, "logprobs": None, "finish_reason": None,
                                "stop_reason": None, **self._chunk_nulls})
        call = plan.tool_call
        if call is not None and step >= len(plan.deltas):
            # vLLM's hermes parser holds the call until `</tool_call>`, then sends ONE chunk:
            # id/type/name and the whole arguments as two entries of index 0.
            if not last:
                return None
            delta: dict[str, Any] = {"content": None, "tool_calls": [
                {"id": call.id, "type": "function", "index": 0, "function": {"name": call.name}},
                {"index": 0, "function": {"arguments": call.arguments}}]}
        else:
            kind, text, _ = plan.deltas[step]
            if kind == "reasoning":
                delta = dict.fromkeys(_reasoning_fields(self.st.cfg.reasoning_field), text)
            else:
                delta = {"content": text}
        return self._event({"index": i, "delta": delta, "logprobs": None, "finish_reason": None, **self._chunk_nulls})

    def _finish_event(self, i: int, plan: ChoicePlan, echo: list[str] | None) -> bytes:
        # vLLM: the fingerprint rides on the finish chunk, or on the usage chunk if one follows.
        fp = not self.req.include_usage
        if self.chat:
            return self._event({"index": i, "delta": {}, "logprobs": None, "finish_reason": plan.finish_reason,
                                "stop_reason": plan.stop_reason, **self._chunk_nulls}, fp)
        return self._event({"index": i, "text": echo[i] if echo is not None else "", "logprobs": None,
                            "finish_reason": plan.finish_reason, "stop_reason": plan.stop_reason,
                            **self._chunk_nulls}, fp)


def _reasoning_fields(setting: str) -> tuple[str, ...]:
    return ("reasoning", "reasoning_content") if setting == "both" else (setting,)
