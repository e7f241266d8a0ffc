"""A lean HTTP/1.1 load generator: asyncio protocols + httptools, keep-alive, SSE aware.

Why not aiohttp/httpx: the load generator shares a core with the simulated engines and
must cost far less per request than the gateway it measures. A raw `asyncio.Protocol`
with httptools' C parser costs a few tens of microseconds per request.

What it measures per request (`Sample`): start, first body byte (for a stream: the first
SSE bytes, i.e. time to first chunk), end, status, number of SSE events, whether the
stream ended with `data: [DONE]`. Two drivers:

- `closed_loop`: N workers, each on its own keep-alive connection, back to back for a
  fixed time; a measurement window after a warm-up, with hooks at its start and end
  (used to read the gateway's CPU time exactly over the window).
- `open_loop`: requests sent at given times (Poisson arrivals) to a target chosen at send
  time (a balancer outside the gateway, e.g. the oracle), over a pool of connections.
"""

from __future__ import annotations

import asyncio
import socket
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import httptools

Target = tuple[str, int]  # (host, port)

_DONE_TAIL = b"data: [DONE]\n\n"


def build_request(target: Target, path: str, body: bytes, headers: dict[str, str] | None = None) -> bytes:
    """The raw bytes of a POST with a JSON body (Content-Length, keep-alive)."""
    host, port = target
    lines = [f"POST {path} HTTP/1.1", f"Host: {host}:{port}", "Content-Type: application/json",
             f"Content-Length: {len(body)}"]
    for k, v in (headers or {}).items():
        lines.append(f"{k}: {v}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body


@dataclass(slots=True)
class Sample:
    start: float
    first: float = 0.0  # first body byte (0 if none)
    end: float = 0.0
    status: int = 0
    events: int = 0  # SSE events ("\n\n"-terminated) seen in the body
    done: bool = False  # a stream that ended with data: [DONE]
    nbytes: int = 0
    error: str | None = None
    body: bytes | None = None  # kept only when asked (smoke tests)
    tag: Any = None  # caller's label (e.g. which backend an open-loop request went to)

    @property
    def ok(self) -> bool:
        return self.error is None and self.status == 200

    @property
    def latency(self) -> float:
        return self.end - self.start

    @property
    def ttfc(self) -> float:
        return (self.first or self.end) - self.start


class ProtocolError(Exception):
    pass


class Conn(asyncio.Protocol):
    """One client connection; `request()` sends one request and waits for its response."""

    def __init__(self, keep_body: bool = False) -> None:
        self.transport: asyncio.Transport | None = None
        self.parser = httptools.HttpResponseParser(self)
        self.keep_body = keep_body
        self.closed = False
        self._waiter: asyncio.Future[None] | None = None
        self._sample: Sample | None = None
        self._tail = b""
        self._chunks: list[bytes] = []
        self._on_first: Callable[[Sample], None] | None = None

    # asyncio.Protocol
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        sock = transport.get_extra_info("socket")
        if sock is not None:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def data_received(self, data: bytes) -> None:
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserError as e:
            self._fail(f"parse error: {e}")
            self.close()

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self._fail("connection closed" + (f": {exc}" if exc else ""))

    # httptools callbacks
    def on_headers_complete(self) -> None:
        if self._sample is not None:
            self._sample.status = self.parser.get_status_code()

    def on_body(self, body: bytes) -> None:
        s = self._sample
        if s is None:
            return
        if not s.first:
            s.first = time.perf_counter()
            if self._on_first is not None:
                self._on_first(s)
        s.nbytes += len(body)
        n = body.count(b"\n\n")
        if self._tail.endswith(b"\n") and body.startswith(b"\n"):
            n += 1
        s.events += n
        self._tail = (self._tail + body)[-len(_DONE_TAIL):]
        if self.keep_body:
            self._chunks.append(body)

    def on_message_complete(self) -> None:
        s = self._sample
        if s is None:
            return
        s.end = time.perf_counter()
        s.done = self._tail == _DONE_TAIL
        if self.keep_body:
            s.body = b"".join(self._chunks)
        if not self.parser.should_keep_alive():
            self.close()
        w, self._waiter, self._sample = self._waiter, None, None
        if w is not None and not w.done():
            w.set_result(None)

    def _fail(self, why: str) -> None:
        s, w = self._sample, self._waiter
        self._sample = self._waiter = None
        if s is not None:
            s.error = s.error or why
            s.end = time.perf_counter()
        if w is not None and not w.done():
            w.set_result(None)

    async def request(self, raw: bytes, on_first: Callable[[Sample], None] | None = None,
                      tag: Any = None) -> Sample:
        assert self._sample is None, "one request at a time per connection"
        s = Sample(start=time.perf_counter(), tag=tag)
        if self.closed or self.transport is None:
            s.error, s.end = "not connected", s.start
            return s
        self._sample, self._tail, self._chunks, self._on_first = s, b"", [], on_first
        self._waiter = asyncio.get_running_loop().create_future()
        self.transport.write(raw)
        await self._waiter
        return s

    def close(self) -> None:
        if self.transport is not None and not self.transport.is_closing():
            self.transport.close()


async def connect(target: Target, keep_body: bool = False, retries: int = 20) -> Conn:
    """Open a connection; retried briefly (a listen backlog can overflow when 1,000 dial at once)."""
    loop = asyncio.get_running_loop()
    delay = 0.01
    for attempt in range(retries):
        try:
            _, proto = await loop.create_connection(lambda: Conn(keep_body), target[0], target[1])
            return proto
        except OSError:
            if attempt == retries - 1:
                raise
            await asyncio.sleep(delay)
            delay = min(delay * 2, 0.5)
    raise AssertionError("unreachable")


# --- closed loop -------------------------------------------------------------------------


@dataclass
class Window:
    """Results of one closed-loop run's measurement window."""

    samples: list[Sample] = field(default_factory=list)  # requests started and finished inside
    completed: int = 0  # requests that finished inside the window (throughput, CPU / request)
    errors: int = 0  # failed requests finishing inside the window
    events: int = 0  # SSE events of requests finishing inside the window
    seconds: float = 0.0
    error_examples: list[str] = field(default_factory=list)


async def closed_loop(
    targets: Sequence[Target],
    raw_for: Callable[[Target], bytes],
    concurrency: int,
    duration: float,
    warmup: float = 0.5,
    stream: bool = False,
    on_window_start: Callable[[], None] | None = None,
    on_window_end: Callable[[], None] | None = None,
    ramp: float = 0.0,
    keep: Callable[[Sample], bool] | None = None,
) -> Window:
    """`concurrency` workers (worker i uses targets[i % len]) loop until the window ends.

    The window opens `warmup` s after the last worker started (`ramp` spreads the starts),
    so connection set-up and first-request costs stay out of it.
    """
    loop = asyncio.get_running_loop()
    t0 = time.perf_counter()
    win_start = t0 + ramp + warmup
    win_end = win_start + duration
    w = Window()
    raws = {t: raw_for(t) for t in targets}

    def account(s: Sample) -> None:
        if win_start <= s.end <= win_end:
            w.completed += 1
            w.events += s.events
            bad = not s.ok or (stream and not s.done)
            if bad:
                w.errors += 1
                if len(w.error_examples) < 5:
                    w.error_examples.append(s.error or f"status {s.status}, done={s.done}")
            if s.start >= win_start and not bad and (keep is None or keep(s)):
                w.samples.append(s)

    async def worker(i: int) -> None:
        if ramp:
            await asyncio.sleep(ramp * i / concurrency)
        target = targets[i % len(targets)]
        raw = raws[target]
        conn: Conn | None = None
        while time.perf_counter() < win_end:
            if conn is None or conn.closed:
                try:
                    conn = await connect(target)
                except OSError as e:
                    account(Sample(start=time.perf_counter(), end=time.perf_counter(), error=f"connect: {e}"))
                    await asyncio.sleep(0.05)
                    continue
            s = await conn.request(raw)
            account(s)
        if conn is not None:
            conn.close()

    async def window_hooks() -> None:
        await asyncio.sleep(max(0.0, win_start - time.perf_counter()))
        if on_window_start:
            on_window_start()
        await asyncio.sleep(max(0.0, win_end - time.perf_counter()))
        if on_window_end:
            on_window_end()

    hooks = loop.create_task(window_hooks())
    await asyncio.gather(*(worker(i) for i in range(concurrency)))
    await hooks
    w.seconds = win_end - win_start
    return w


# --- open loop -------------------------------------------------------------------------


class ConnPool:
    """Idle keep-alive connections per target, for open-loop traffic."""

    def __init__(self) -> None:
        self._idle: dict[Target, list[Conn]] = {}

    async def request(self, target: Target, raw: bytes, on_first: Callable[[Sample], None] | None = None,
                      tag: Any = None) -> Sample:
        idle = self._idle.setdefault(target, [])
        conn = None
        while idle:
            c = idle.pop()
            if not c.closed:
                conn = c
                break
        if conn is None:
            try:
                conn = await connect(target)
            except OSError as e:
                now = time.perf_counter()
                return Sample(start=now, end=now, error=f"connect: {e}", tag=tag)
        try:
            s = await conn.request(raw, on_first, tag)
        except asyncio.CancelledError:
            conn.close()  # the server sees the disconnect and aborts the request
            raise
        if not conn.closed and s.error is None:
            idle.append(conn)
        return s

    def close(self) -> None:
        for conns in self._idle.values():
            for c in conns:
                c.close()
        self._idle.clear()


async def open_loop(
    arrivals: Sequence[float],
    send: Callable[[int], Awaitable[Sample]],
    deadline: float,
) -> list[Sample | None]:
    """Start request i at `arrivals[i]` seconds (relative), via `send(i)`; wait for all of them
    but no longer than `deadline` seconds after the start (unfinished ones come back None)."""
    loop = asyncio.get_running_loop()
    t0 = time.perf_counter()
    results: list[Sample | None] = [None] * len(arrivals)

    async def one(i: int) -> None:
        results[i] = await send(i)

    tasks: list[asyncio.Task[None]] = []
    for i, at in enumerate(arrivals):
        delay = t0 + at - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        tasks.append(loop.create_task(one(i)))
    remaining = t0 + deadline - time.perf_counter()
    if tasks:
        _, pending = await asyncio.wait(tasks, timeout=max(0.0, remaining))
        for t in pending:
            t.cancel()
        await asyncio.gather(*pending, return_exceptions=True)
    return results


# --- statistics --------------------------------------------------------------------------


def percentile(values: Sequence[float], p: float) -> float:
    """Linear-interpolated percentile (p in 0..100) of unsorted values; nan when empty."""
    if not values:
        return float("nan")
    v = sorted(values)
    if len(v) == 1:
        return v[0]
    k = (len(v) - 1) * p / 100.0
    lo = int(k)
    hi = min(lo + 1, len(v) - 1)
    return v[lo] + (v[hi] - v[lo]) * (k - lo)


def mean(values: Sequence[float]) -> float:
    return sum(values) / len(values) if values else float("nan")
