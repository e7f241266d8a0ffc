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
from collections.abc import AsyncIterator

from gateway.sim.errors import ApiError
from gateway.sim.generate import build_plans
from gateway.sim.http import Connection, Request
from gateway.sim.protocol import GenRequest
from gateway.sim.state import SimState
from gateway.sim.textgen import ChoicePlan


def header_ms(req: Request, name: str, default: float) -> float:
    raw = req.headers.get(name)
    if raw is None:
        return default
    try:
        return max(0.0, float(raw))
    except ValueError:
        return default


def maybe_fail(st: SimState) -> None:
    """The error_rate fault, drawn after validation (as for chat, completions and embeddings)."""
    faults = st.cfg.faults
    if faults.error_rate > 0.0 and st.rng.random() < faults.error_rate:
        raise ApiError(faults.error_status, f"Simulated engine failure (fault error_rate={faults.error_rate})")


class Run:
    """A generation of ONE choice. Use `await unary()` or `async with aclosing(run.steps())`."""

    def __init__(self, st: SimState, greq: GenRequest, http: Request, conn: Connection,
                 plan: ChoicePlan | None = None) -> None:
        self.st = st
        self.req = greq
        self.conn = conn
        self.plan = plan if plan is not None else build_plans(st, greq, http)[0]
        cfg = st.cfg
        self.ttft_s = (header_ms(http, "x-sim-ttft-ms", cfg.ttft_ms)
                       + cfg.prefill_ms_per_token * greq.prompt_tokens) / 1000.0
        self.itl_s = header_ms(http, "x-sim-itl-ms", cfg.itl_ms) / 1000.0
        self.loop = asyncio.get_running_loop()
        self.t_arrive = self.loop.time()

    @property
    def prompt_tokens(self) -> int:
        return self.req.prompt_tokens

    def _finish(self, reason: str) -> None:
        self.st.metrics.finished([reason], self.loop.time() - self.t_arrive)

    async def unary(self) -> None:
        """Hold a slot for TTFT + (steps-1) x ITL; count the tokens (partially on abort)."""
        st, sched, plan = self.st, self.st.sched, self.plan
        acquired = finished = False
        ttft = itl = 0.0
        t0 = self.t_arrive
        try:
            await sched.acquire()
            acquired = True
            t0 = self.loop.time()
            ttft = sched.jittered(self.ttft_s)
            itl = self.itl_s * sched.slowdown()
            total = ttft + sum(sched.jittered(itl) for _ in range(max(0, plan.steps - 1)))
            if total > 0.0:
                await asyncio.sleep(total)
            finished = True
        finally:
            if acquired:
                sched.release()
                if not finished:
                    elapsed = self.loop.time() - t0
                    if elapsed >= ttft:  # prefilled before the client left: count what was produced
                        k = plan.steps if itl <= 0.0 else 1 + int((elapsed - ttft) / itl)
                        st.metrics.generation_tokens += plan.tokens_in_first(k)
                        st.metrics.prompt_tokens += self.prompt_tokens
                        st.metrics.ttft.observe(t0 - self.t_arrive + ttft)
            if not finished:
                self._finish("abort")
        st.metrics.prompt_tokens += self.prompt_tokens
        st.metrics.generation_tokens += plan.completion_tokens
        st.metrics.ttft.observe(t0 - self.t_arrive + ttft)
        self._finish(plan.finish_reason)

    async def steps(self, flush: Flush) -> AsyncIterator[int]:
        """Yield each output step index when its time has come (the first after TTFT).

        The caller formats and writes step i's event(s) with `flush` pending bytes before
        the next sleep. Generation tokens count as the step is yielded (an abort keeps them),
        and the stall/crash token faults act here, as in chat streams.
        """
        st, sched, plan, conn = self.st, self.st.sched, self.plan, self.conn
        faults = st.cfg.faults
        acquired = finished = False
        try:
            await sched.acquire()
            acquired = True
            deadline = self.loop.time() + sched.jittered(self.ttft_s)
            await _sleep_until(self.loop, deadline)
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
                await _sleep_until(self.loop, deadline)
            finished = True
        finally:
            if acquired:
                sched.release()
            self._finish(plan.finish_reason if finished else "abort")


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


async def _sleep_until(loop: asyncio.AbstractEventLoop, deadline: float) -> None:
    delay = deadline - loop.time()
    if delay > 0.0:
        await asyncio.sleep(delay)
