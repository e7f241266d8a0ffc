"""Clients that misbehave on purpose (issue #13): one that never reads a stream must not
keep its engine slot: the gateway cuts it once its bounded relay buffer overflows and it
reads nothing for the backlog timeout, or once it has read nothing for the write timeout,
and the pool goes on serving others. One that reads, only slower than its engine writes,
is waited for (backpressure) and gets its whole stream."""

from __future__ import annotations

import json
import socket
import time

import httpx
import pytest

from gateway.metering.record import UsageRecord
from gateway.sim.testing import SimProcess
from tests.faults.endless_engine import EndlessEngine
from tests.gw import CLIENT_KEY, GatewayServer, auth_yaml, wait_until

WRITE_TIMEOUT = 1.0
RELAY_BUFFER = 256 * 1024


def _gateway(url: str, slots: int | None = 1, **server: float | int) -> GatewayServer:
    """A gateway with one pool `m` on the engine at `url` and these `server:` settings."""
    settings = ", ".join(f"{k}: {v}" for k, v in server.items())
    pool = f"endpoints: [\"{url}\"]" + (f", max_concurrency: {slots}" if slots is not None else "")
    return GatewayServer(auth_yaml() + f"""
server: {{{settings}}}
store: "memory://"
pools:
  m: {{{pool}}}
""")


def _never_reading_stream(port: int) -> socket.socket:
    """Ask for a stream with a tiny receive buffer, and never read it."""
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    s.connect(("127.0.0.1", port))
    body = json.dumps({"model": "m", "messages": [{"role": "user", "content": "hi"}], "stream": True}).encode()
    s.sendall(
        f"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {CLIENT_KEY}\r\n"
        f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n".encode() + body
    )
    return s


def _chat(gw: GatewayServer, timeout: float = 20) -> httpx.Response:
    return httpx.post(gw.base_url + "/chat/completions", headers={"authorization": f"Bearer {CLIENT_KEY}"},
                      json={"model": "m", "messages": [{"role": "user", "content": "hi"}]}, timeout=timeout)


def _records(gw: GatewayServer, n: int) -> list[UsageRecord]:
    assert wait_until(lambda: gw.state.meter.recorded >= n, 10), gw.state.meter.recorded
    assert gw.call(lambda: gw.state.meter.flush()) is True
    return list(gw.state.meter.store.records)


def _assert_reset(deaf: socket.socket) -> None:
    """The server reset the stalled client's connection (after whatever was queued for it)."""
    deaf.settimeout(5)
    with pytest.raises(ConnectionResetError):
        while deaf.recv(1 << 20):
            pass


def test_a_never_reading_client_frees_its_engine_slot_as_soon_as_its_relay_buffer_overflows() -> None:
    # The write timeout is far away: only the bounded relay buffer can release the slot.
    with EndlessEngine() as engine:
        with _gateway(engine.base_url, write_timeout=60, relay_buffer_bytes=RELAY_BUFFER) as gw:
            pool = gw.state.pools["m"]
            deaf = _never_reading_stream(gw.port)
            try:
                assert wait_until(lambda: engine.streams == 1, 5)
                t0 = time.monotonic()
                # The engine writes as fast as it can: kernel buffers and the 256 KiB relay
                # buffer fill in well under a second, then the gateway aborts the engine
                # request (the engine's own gauge drops) and the slot is free.
                assert wait_until(lambda: engine.streaming == 0 and pool.outstanding == 0, 5), (
                    engine.streaming, pool.outstanding)
                freed = time.monotonic() - t0
                assert freed < 5, freed
                r = _chat(gw)
                assert r.status_code == 200 and r.json()["choices"][0]["message"]["content"] == "ok"
                _assert_reset(deaf)
                # Metered: a cut stream that reached the client's socket, marked as such.
                cut = [r for r in _records(gw, 2) if r.error is not None]
                assert len(cut) == 1 and cut[0].error == "client stopped reading" and cut[0].status == 200
            finally:
                deaf.close()


def test_a_never_reading_client_on_a_slow_stream_is_cut_after_the_write_timeout() -> None:
    # 64 KiB every 20 ms: the relay buffer (64 MiB) would take ~20 s to overflow, so what
    # cuts this client is the write timeout: it has read nothing for WRITE_TIMEOUT.
    with EndlessEngine(interval=0.02) as engine:
        with _gateway(engine.base_url, write_timeout=WRITE_TIMEOUT, relay_buffer_bytes=64 * 1024 * 1024) as gw:
            pool = gw.state.pools["m"]
            deaf = _never_reading_stream(gw.port)
            try:
                assert wait_until(lambda: pool.outstanding == 1 and engine.streaming == 1, 5)
                t0 = time.monotonic()
                # Another client asks meanwhile: it is served once the stalled one is cut.
                r = _chat(gw)
                waited = time.monotonic() - t0
                assert r.status_code == 200 and r.json()["choices"][0]["message"]["content"] == "ok"
                # Kernel buffers take a few MB (~1-3 s at this rate); then the write timeout.
                assert WRITE_TIMEOUT <= waited < WRITE_TIMEOUT + 6.0, waited
                assert wait_until(lambda: engine.streaming == 0, 2), engine.streaming
                _assert_reset(deaf)
            finally:
                deaf.close()


def test_many_never_reading_clients_do_not_starve_the_others() -> None:
    # More non-readers than slots: each is cut as its buffer overflows, so normal
    # requests keep being served while they sit there with their sockets open.
    with EndlessEngine() as engine:
        with _gateway(engine.base_url, slots=4, write_timeout=60, relay_buffer_bytes=RELAY_BUFFER) as gw:
            pool = gw.state.pools["m"]
            deaf = [_never_reading_stream(gw.port) for _ in range(6)]
            try:
                assert wait_until(lambda: engine.streams == 6 and engine.streaming == 0 and pool.outstanding == 0,
                                  10), (engine.streams, engine.streaming, pool.outstanding)
                for _ in range(5):
                    t0 = time.monotonic()
                    r = _chat(gw, timeout=5)
                    assert r.status_code == 200 and time.monotonic() - t0 < 2
                for d in deaf:
                    _assert_reset(d)
            finally:
                for d in deaf:
                    d.close()


def test_a_client_that_reads_slowly_but_steadily_is_not_cut() -> None:
    with SimProcess(["--served-model-name", "m", "--ttft-ms", "1", "--itl-ms", "1"]) as sim:
        with _gateway(sim.base_url, slots=None, write_timeout=WRITE_TIMEOUT) as gw:
            events, last = 0, ""
            with httpx.stream("POST", gw.base_url + "/chat/completions",
                              headers={"authorization": f"Bearer {CLIENT_KEY}"},
                              json={"model": "m", "messages": [{"role": "user", "content": "hi"}], "stream": True,
                                    "max_tokens": 30}, timeout=20) as r:
                for line in r.iter_lines():
                    if line.startswith("data: "):
                        events, last = events + 1, line
                        time.sleep(0.05)  # 30 x 50 ms: longer than the write timeout in total
            assert events >= 30 and last == "data: [DONE]"


def _slow_reading_stream(port: int, pace: float, stop_after: int | None = None) -> tuple[int, bytes]:
    """Read a stream 16 KiB every `pace` seconds (stop reading after `stop_after` bytes and
    wait for the server to reset): the bytes read and the last of them."""
    s = _never_reading_stream(port)
    got, tail = 0, b""
    try:
        s.settimeout(10)
        while stop_after is None or got < stop_after:
            data = s.recv(16384)
            if not data:
                break
            got, tail = got + len(data), (tail + data)[-64:]
            if tail.endswith(b"0\r\n\r\n"):
                break
            time.sleep(pace)
        if stop_after is not None:
            time.sleep(3)  # reads nothing: the gateway resets after the backlog timeout
            _assert_reset(s)
        return got, tail
    finally:
        s.close()


def test_a_client_reading_slower_than_its_engine_writes_gets_the_whole_stream() -> None:
    # 48 x 64 KiB written as fast as the engine can; the client takes ~1.6 MB/s, so its
    # backlog passes the 256 KiB bound within a second. It keeps reading: the relay waits
    # for it (stops reading the engine) instead of cutting it.
    with EndlessEngine(events=48) as engine:
        with _gateway(engine.base_url, write_timeout=60, relay_buffer_bytes=RELAY_BUFFER, backlog_timeout=1) as gw:
            got, tail = _slow_reading_stream(gw.port, 0.01)
            assert tail.endswith(b"data: [DONE]\n\n\r\n0\r\n\r\n"), tail
            assert got > 48 * 65536, got
            records = _records(gw, 1)
            assert [r.error for r in records] == [None] and records[0].status == 200
            assert gw.state.pools["m"].outstanding == 0


def test_a_client_reading_at_a_modest_rate_is_not_taken_for_a_stalled_one() -> None:
    # ~200 KB/s with the default send buffer (the kernel's is 512 KiB): the socket turns
    # writable only after ~170 KB drained, so judged by the transport alone this client
    # would show no progress for ~0.85 s at a time, past the 0.5 s backlog timeout. The
    # kernel's send queue shows each read.
    with EndlessEngine(events=14) as engine:
        with _gateway(engine.base_url, write_timeout=60, relay_buffer_bytes=RELAY_BUFFER, backlog_timeout=0.5) as gw:
            got, tail = _slow_reading_stream(gw.port, 0.04)
            assert tail.endswith(b"data: [DONE]\n\n\r\n0\r\n\r\n"), (got, tail)
            assert [r.error for r in _records(gw, 1)] == [None]


def test_a_client_that_stops_reading_past_the_bound_is_cut_after_the_backlog_timeout() -> None:
    # Reads ~1 MB, then nothing: past the bound the relay waits for it for the backlog
    # timeout, then cuts it and frees the engine (the write timeout is far away).
    with EndlessEngine() as engine:
        with _gateway(engine.base_url, write_timeout=60, relay_buffer_bytes=RELAY_BUFFER, backlog_timeout=1) as gw:
            t0 = time.monotonic()
            got, _ = _slow_reading_stream(gw.port, 0.005, stop_after=1 << 20)
            assert got >= 1 << 20
            assert wait_until(lambda: engine.streaming == 0 and gw.state.pools["m"].outstanding == 0, 2)
            assert time.monotonic() - t0 < 10
            cut = [r for r in _records(gw, 1) if r.error is not None]
            assert len(cut) == 1 and cut[0].error == "client stopped reading"


def test_client_sockets_get_the_configured_send_buffer() -> None:
    # A fixed SO_SNDBUF, not the kernel's autotuning (megabytes on loopback): what a client
    # that stops reading can absorb before the relay buffer takes over stays small.
    with SimProcess(["--served-model-name", "m"]) as sim:
        with _gateway(sim.base_url, slots=None, client_send_buffer_bytes=131072) as gw, socket.create_connection(("127.0.0.1", gw.port)) as s:
            assert wait_until(lambda: len(gw.server.connections) == 1, 5)
            conn = next(iter(gw.server.connections))
            sock = conn.transport.get_extra_info("socket")
            # Linux doubles the value for its bookkeeping; autotuning would start at 16 KiB
            # and grow to 4 MiB.
            assert sock.getsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF) == 2 * 131072
            s.sendall(b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n")
            assert s.recv(100).startswith(b"HTTP/1.1 200")
