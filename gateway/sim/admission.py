"""A request's seat in the engine: what every generating API shares, in the order vLLM does it.

Admission: wait while the engine sleeps, then for a batch slot (FIFO), then for KV blocks
(the prefix cache may serve part of the prompt); the prefill is then booked behind the
ones already admitted, and the time to first token is known. Leaving frees the slot and
the blocks; a completed request's output blocks stay cached. An engine-side abort (sleep
with mode=abort) ends the seat's current wait at once.

`Generation` (chat, completions) and `steps.Run` (Responses, Messages, transcriptions)
are seats; they differ only in which prompts and outputs the KV cache sees.
"""

from __future__ import annotations

import asyncio

from gateway.sim.http import Request
from gateway.sim.prefix_cache import RequestKv
from gateway.sim.state import SimState


def header_ms(req: Request, name: str, default: float) -> float:
    """A per-request timing override (`x-sim-ttft-ms`, `x-sim-itl-ms`); bad values are ignored."""
    raw = req.headers.get(name)
    if raw is None:
        return default
    try:
        return max(0.0, float(raw))
    except ValueError:
        return default


class Seat:
    """Subclasses set `st`, `ttft_fixed_ms` and the prompt size, and say what the KV cache sees."""

    st: SimState
    ttft_fixed_ms: float

    def _init_seat(self) -> None:
        self.ttft_s = 0.0  # known at admission, once the cached prefix is known
        self.cached_tokens = 0
        self.kv: RequestKv | None = None
        self.acquired = False
        self.engine_aborted = False
        self._timer: asyncio.Future[None] | None = None

    # ---- what the KV cache sees (per subclass) ------------------------------------
    def _prompt_tokens(self) -> int:
        raise NotImplementedError

    def _kv_shape(self) -> tuple[list[list[int]], list[int]]:
        """(token ids of each prompt, output tokens planned for each prompt)."""
        raise NotImplementedError

    def _cached_outputs(self) -> list[list[int]]:
        """Output token ids per prompt, kept cached after a completed request."""
        raise NotImplementedError

    # ---- admission and release -----------------------------------------------------
    async def _admit(self) -> None:
        st = self.st
        while True:
            await st.engine.wait_awake()
            await st.sched.acquire()
            if not st.engine.is_sleeping:
                break
            st.sched.release()  # it fell asleep while we queued: wait for the wake-up again
        self.acquired = True
        st.engine.enter(self)
        prompts, outputs = self._kv_shape()
        self.kv = RequestKv(st.kv, prompts, outputs)
        self.cached_tokens = await self.kv.admit()
        prefill_s = st.cfg.prefill_ms_per_token * (self._prompt_tokens() - self.cached_tokens) / 1000.0
        behind_s = st.sched.book_prefill(asyncio.get_running_loop().time(), prefill_s)
        self.ttft_s = behind_s + self.ttft_fixed_ms / 1000.0 + prefill_s

    def _leave(self, completed: bool) -> None:
        st = self.st
        if not self.acquired:
            return
        self.acquired = False
        st.sched.release()
        st.engine.leave(self)
        if self.kv is not None:
            self.kv.release(self._cached_outputs() if completed and st.kv.enabled else None)
            self.kv = None

    # ---- engine-side abort ------------------------------------------------------------
    def engine_abort(self) -> None:
        """The engine drops this request (sleep with mode=abort): it ends at its next step."""
        self.engine_aborted = True
        if self._timer is not None and not self._timer.done():
            self._timer.set_result(None)

    async def _sleep_until(self, deadline: float) -> None:
        """asyncio.sleep until `deadline` (loop time), except that engine_abort() ends it early."""
        loop = asyncio.get_running_loop()
        delay = deadline - loop.time()
        if delay > 0.0 and not self.engine_aborted:
            timer: asyncio.Future[None] = loop.create_future()
            self._timer = timer
            handle = loop.call_later(delay, _resolve, timer)
            try:
                await timer
            finally:
                handle.cancel()
                self._timer = None


def _resolve(fut: asyncio.Future[None]) -> None:
    if not fut.done():
        fut.set_result(None)
