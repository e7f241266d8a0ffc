"""Misbehaving clients for the robustness scenario: slowloris, never-reading streams, malformed HTTP.

Each probe is bounded in count and time, talks only to 127.0.0.1, and closes what it opens.
"""

from __future__ import annotations

import asyncio
import json
import socket
import time
from collections.abc import Sequence
from dataclasses import dataclass, field

from . import loadgen

# --- slowloris ----------------------------------------------------------------------------


@dataclass
class Held:
    """How a server treated connections that stopped sending mid-request."""

    opened: int = 0
    closed: int = 0  # by the server within the hold time
    close_after_s: list[float] = field(default_factory=list)  # seconds from the last byte sent to the close
    answers: dict[str, int] = field(default_factory=dict)  # first line the server wrote before closing -> count


class _Idle(asyncio.Protocol):
    def __init__(self, first: bytes, closed: asyncio.Future[tuple[float, bytes]]) -> None:
        self.first, self.closed, self.got = first, closed, b""
        self.sent_at = 0.0

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport
        transport.write(self.first)  # type: ignore[attr-defined]
        self.sent_at = time.perf_counter()

    def data_received(self, data: bytes) -> None:
        if len(self.got) < 512:
            self.got += data[:512]

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.closed.done():
            self.closed.set_result((time.perf_counter() - self.sent_at, self.got))


async def slowloris(target: loadgen.Target, first: bytes, n: int, hold: float) -> Held:
    """Open `n` connections that each send `first` (an incomplete request) and then nothing;
    wait `hold` seconds; count the ones the server closed, and when."""
    loop = asyncio.get_running_loop()
    held, protos = Held(), []
    for _ in range(n):
        fut: asyncio.Future[tuple[float, bytes]] = loop.create_future()
        try:
            _, proto = await loop.create_connection(lambda f=fut: _Idle(first, f), *target)  # type: ignore[misc]
        except OSError:
            continue
        protos.append(proto)
        held.opened += 1
    if protos:
        await asyncio.wait([p.closed for p in protos], timeout=hold)
    for p in protos:
        if p.closed.done():
            after, got = p.closed.result()
            held.closed += 1
            held.close_after_s.append(after)
            line = got.split(b"\r\n", 1)[0].decode("latin-1")[:60] or "(nothing)"
            held.answers[line] = held.answers.get(line, 0) + 1
        else:
            p.transport.close()
    return held


# --- never-reading streams ----------------------------------------------------------------


class _Deaf(asyncio.Protocol):
    """Sends one request and never reads the answer (kernel receive window shrinks to zero)."""

    def __init__(self, raw: bytes) -> None:
        self.raw, self.lost = raw, False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport
        transport.pause_reading()  # type: ignore[attr-defined]
        transport.write(self.raw)  # type: ignore[attr-defined]

    def connection_lost(self, exc: Exception | None) -> None:
        self.lost = True


async def open_deaf(target: loadgen.Target, raw: bytes, n: int, rcvbuf: int = 4096) -> list[_Deaf]:
    """`n` clients that send `raw` and never read, with a small receive buffer so that the
    server's writes stall after a few kilobytes."""
    loop = asyncio.get_running_loop()
    out = []
    for _ in range(n):
        s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
        s.setblocking(False)
        await loop.sock_connect(s, target)
        _, proto = await loop.create_connection(lambda: _Deaf(raw), sock=s)
        out.append(proto)
    return out


@dataclass
class Timed:
    latencies: list[float] = field(default_factory=list)  # every request, failures at the time they failed
    ok: int = 0
    failed: dict[str, int] = field(default_factory=dict)


async def timed_requests(target: loadgen.Target, raw: bytes, concurrency: int, duration: float,
                         timeout: float) -> Timed:  # noqa: ASYNC109 (a per-request cut, not one for the call)
    """A closed loop like loadgen's, but every request is cut after `timeout` seconds (a
    starved server must not stretch the run), and failures count in the latencies."""
    out = Timed()
    end = time.perf_counter() + duration

    def fail(why: str, lat: float) -> None:
        out.failed[why] = out.failed.get(why, 0) + 1
        out.latencies.append(lat)

    async def worker() -> None:
        conn: loadgen.Conn | None = None
        while time.perf_counter() < end:
            t0 = time.perf_counter()
            try:
                if conn is None or conn.closed:
                    conn = await asyncio.wait_for(loadgen.connect(target, retries=1), timeout)
                s = await asyncio.wait_for(conn.request(raw), timeout)
            except (TimeoutError, OSError) as e:
                if conn is not None:
                    conn.close()
                conn = None
                fail("timeout" if isinstance(e, TimeoutError) else f"connect: {e}", time.perf_counter() - t0)
                continue
            if s.ok:
                out.ok += 1
                out.latencies.append(s.latency)
            else:
                fail(s.error or f"status {s.status}", s.latency)
        if conn is not None:
            conn.close()

    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return out


# --- malformed HTTP -----------------------------------------------------------------------

MALFORMED: dict[str, bytes] = {
    "bad Content-Length": (b"POST /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1\r\n"
                           b"Content-Type: application/json\r\nContent-Length: 12abc\r\n\r\n{}"),
    "unknown method": b"FROB /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n",
    "bad chunk size": (b"POST /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
                       b"Transfer-Encoding: chunked\r\n\r\nzz\r\n{}\r\n0\r\n\r\n"),
    "raw garbage": b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03 not http at all\r\n\r\n",
}


@dataclass
class Answer:
    status: int | None  # None: no status line (closed or silent)
    body: str  # first bytes of the body
    openai_error: bool  # body is {"error": {"message", "type", "param", "code"}}
    closed: bool  # the server closed the connection within the wait


def openai_shaped(body: bytes) -> bool:
    try:
        err = json.loads(body)["error"]
    except (ValueError, KeyError, TypeError):
        return False
    return isinstance(err, dict) and {"message", "type", "param", "code"} <= set(err)


async def malformed(target: loadgen.Target, raw: bytes, wait: float = 3.0) -> Answer:
    """Send `raw`, read what comes back until the server closes or `wait` passes."""
    got, closed = b"", False
    try:
        reader, writer = await asyncio.wait_for(asyncio.open_connection(*target), wait)
    except (OSError, TimeoutError):
        return Answer(None, "(connect failed)", False, True)
    try:
        writer.write(raw)
        deadline = time.perf_counter() + wait
        while time.perf_counter() < deadline and len(got) < 65536:
            try:
                chunk = await asyncio.wait_for(reader.read(65536), deadline - time.perf_counter())
            except TimeoutError:
                break
            except OSError:
                closed = True
                break
            if not chunk:
                closed = True
                break
            got += chunk
            if _complete(got):
                break
    finally:
        writer.close()
        try:
            await asyncio.wait_for(writer.wait_closed(), 1.0)
        except (OSError, TimeoutError):
            pass
    head, _, body = got.partition(b"\r\n\r\n")
    status = None
    parts = head.split(b" ", 2)
    if len(parts) >= 2 and parts[0].startswith(b"HTTP/") and parts[1].isdigit():
        status = int(parts[1])
    if b"transfer-encoding: chunked" in head.lower():
        body = _dechunk(body)
    return Answer(status, body[:160].decode("utf-8", "replace"), openai_shaped(body), closed)


def _complete(got: bytes) -> bool:
    head, sep, body = got.partition(b"\r\n\r\n")
    if not sep:
        return False
    for line in head.lower().split(b"\r\n"):
        if line.startswith(b"content-length:"):
            try:
                return len(body) >= int(line.split(b":", 1)[1])
            except ValueError:
                return False
    return body.endswith(b"0\r\n\r\n")


def _dechunk(body: bytes) -> bytes:
    out, rest = b"", body
    while rest:
        size_line, _, rest = rest.partition(b"\r\n")
        try:
            n = int(size_line.split(b";")[0], 16)
        except ValueError:
            break
        if n == 0:
            break
        out, rest = out + rest[:n], rest[n + 2:]
    return out


def percentile(values: Sequence[float], p: float) -> float:
    return loadgen.percentile(values, p)
