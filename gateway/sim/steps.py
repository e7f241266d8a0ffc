"""One single-choice generation held in a batch slot, for the API shapes other than chat/completions.

The Responses API, the Anthropic Messages API and streamed transcriptions render their
own wire formats but share the engine's behaviour with chat: a FIFO batch slot, TTFT then
one step per ITL on absolute deadlines, `vllm:*` metrics, abort accounting on client
disconnect, and the token faults. `Run` owns that behaviour; the API modules only format.

vLLM itself serves these APIs by converting them to a chat request on the same engine
(`AnthropicServingMessages` subclasses `OpenAIServingChat`; the Responses server calls
`engine_client.generate`), so the accounting is the same as for chat by construction.
"""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import AsyncIterator

from gateway.sim.admission import Seat, header_ms
from gateway.sim.errors import ApiError, engine_dead
from gateway.sim.generate import build_plans
from gateway.sim.http import Connection, Request
from gateway.sim.prefix_cache import output_ids
from gateway.sim.protocol import GenRequest
from gateway.sim.state import SimState
from gateway.sim.textgen import ChoicePlan


def maybe_fail(st: SimState) -> None:
    """The error_rate fault, drawn after validation (as for chat, completions and embeddings)."""
    faults = st.cfg.faults
    if faults.engine_dead:
        raise engine_dead()
    if faults.error_rate > 0.0 and st.rng.random() < faults.error_rate:
        raise ApiError(faults.error_status, f"Simulated engine failure (fault error_rate={faults.error_rate})")


class Run(Seat):
    """A generation of ONE choice. Use `await unary()` or `async with aclosing(run.steps())`."""

    def __init__(self, st: SimState, greq: GenRequest, http: Request, conn: Connection,
                 plan: ChoicePlan | None = None) -> None:
        self.st = st
        self.req = greq
        self.conn = conn
        self.plan = plan if plan is not None else build_plans(st, greq, http)[0]
        cfg = st.cfg
        self.ttft_fixed_ms = header_ms(http, "x-sim-ttft-ms", cfg.ttft_ms)
        self.itl_s = header_ms(http, "x-sim-itl-ms", cfg.itl_ms) / 1000.0
        self._init_seat()
        self.loop = asyncio.get_running_loop()
        self.t_arrive = self.loop.time()

    # ---- what the KV cache sees (admission and release: `Seat`) ------------------------
    def _prompt_tokens(self) -> int:
        return self.req.prompt_tokens

    def _kv_shape(self) -> tuple[list[list[int]], list[int]]:
        prompt = self.req.prompts[0]
        return [self.st.prompt_ids.get(prompt.key, prompt.ids)], [self.plan.completion_tokens]

    def _cached_outputs(self) -> list[list[int]]:
        text = self.plan.text("content")
        eos = self.plan.finish_reason == "stop" and self.plan.stop_reason is None
        return [output_ids(text, eos) if text else []]

    def _cut(self, steps: int) -> None:
        """Keep what `steps` steps produced; the request finished with reason `abort`."""
        p = self.plan
        self.plan = dataclasses.replace(p, deltas=p.deltas[:steps], completion_tokens=p.tokens_in_first(steps),
                                        finish_reason="abort", stop_reason=None)

    @property
    def prompt_tokens(self) -> int:
        return self.req.prompt_tokens

    @property
    def cache_write_tokens(self) -> int:
        """Prompt tokens this request writes into the prefix cache: its full blocks not already
        cached (vLLM 0.32's num_cache_creation_tokens, "prompt tokens counted as local prefix-cache
        writes"; the sim's reading of it). 0 with prefix caching off."""
        kv = self.st.kv
        if not kv.enabled:
            return 0
        return max(0, self.prompt_tokens // kv.block_size * kv.block_size - self.cached_tokens)

    def _finish(self, reason: str) -> None:
        self.st.metrics.finished([reason], self.loop.time() - self.t_arrive)

    async def unary(self) -> None:
        """Hold a slot for TTFT + (steps-1) x ITL; count the tokens (partially on abort)."""
        st, sched, plan = self.st, self.st.sched, self.plan
        finished = False
        ttft = itl = 0.0
        t0 = self.t_arrive
        try:
            await self._admit()
            t0 = self.loop.time()
            ttft = sched.jittered(self.ttft_s)
            itl = self.itl_s * sched.slowdown()
            total = ttft + sum(sched.jittered(itl) for _ in range(max(0, plan.steps - 1)))
            await self._sleep_until(t0 + total)
            finished = True
        finally:
            if self.acquired:
                self._leave(finished and not self.engine_aborted)
                if not finished:
                    elapsed = self.loop.time() - t0
                    if elapsed >= ttft:  # prefilled before the client left: count what was produced
                        k = plan.steps if itl <= 0.0 else 1 + int((elapsed - ttft) / itl)
                        st.metrics.generation_tokens += plan.tokens_in_first(k)
                        st.metrics.prompt_tokens += self.prompt_tokens
                        st.metrics.ttft.observe(t0 - self.t_arrive + ttft)
            if not finished:
                self._finish("abort")
        if self.engine_aborted:
            elapsed = self.loop.time() - t0
            k = 0 if elapsed < ttft else plan.steps if itl <= 0.0 else 1 + int((elapsed - ttft) / itl)
            self._cut(k)
            if k > 0:
                st.metrics.prompt_tokens += self.prompt_tokens
                st.metrics.ttft.observe(t0 - self.t_arrive + ttft)
            st.metrics.generation_tokens += self.plan.completion_tokens
            self._finish("abort")
            return
        st.metrics.prompt_tokens += self.prompt_tokens
        st.metrics.generation_tokens += plan.completion_tokens
        st.metrics.ttft.observe(t0 - self.t_arrive + ttft)
        self._finish(plan.finish_reason)

    async def steps(self, flush: Flush) -> AsyncIterator[int]:
        """Yield each output step index when its time has come (the first after TTFT).

        The caller formats step i's event(s) into `flush`, which is written before each
        sleep. Generation tokens count as the step is yielded (a client abort keeps them),
        and the stall/crash token faults act here, as in chat streams. After an engine-side
        abort the iteration stops early and `self.plan` is cut to what was sent.
        """
        st, sched, plan, conn = self.st, self.st.sched, self.plan, self.conn
        faults = st.cfg.faults
        finished = False
        try:
            await self._admit()
            deadline = self.loop.time() + sched.jittered(self.ttft_s)
            await self._sleep_until(deadline)
            if self.engine_aborted:  # dropped before its first token
                self._cut(0)
                finished = True
                return
            st.metrics.prompt_tokens += self.prompt_tokens
            st.metrics.ttft.observe(self.loop.time() - self.t_arrive)
            for step in range(plan.steps):
                stall = faults.stall_after_tokens
                if stall is not None and step >= stall:
                    flush.write()
                    await asyncio.Event().wait()  # hung engine: hold the slot until the client leaves
                st.metrics.generation_tokens += plan.step_tokens(step)
                yield step
                crash = faults.crash_after_tokens
                if crash is not None and step + 1 >= crash:
                    flush.write()
                    st.crash(conn, f"crash_after_tokens={crash}")
                    await asyncio.Event().wait()
                if step < plan.steps - 1:
                    deadline += sched.jittered(self.itl_s * sched.slowdown())
                    if deadline <= self.loop.time() and flush.pending < 64:
                        continue  # overdue: coalesce into one write, as chat streams do
                flush.write()
                await conn.drain()
                await self._sleep_until(deadline)
                if self.engine_aborted and step < plan.steps - 1:
                    self._cut(step + 1)
                    break
            finished = True
        finally:
            self._leave(finished and not self.engine_aborted)
            self._finish(self.plan.finish_reason if finished else "abort")


class Flush:
    """Events buffered for one socket write (a chunk of the chunked body)."""

    def __init__(self, conn: Connection) -> None:
        self.conn = conn
        self.events: list[bytes] = []

    @property
    def pending(self) -> int:
        return len(self.events)

    def add(self, event: bytes) -> None:
        self.events.append(event)

    def write(self) -> None:
        if self.events:
            self.conn.write_chunk(b"".join(self.events))
            self.events = []
