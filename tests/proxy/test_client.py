"""The engine-facing HTTP client against a real simulated engine, and the aiohttp fallback."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Iterator

import aiohttp
import httpx
import openai
import orjson
import pytest

from gateway.proxy import client as httpclient
from gateway.proxy.client import RawSession
from gateway.sim.testing import SimProcess, free_port
from tests.gw import CLIENT_KEY, GatewayServer, auth_yaml, wait_until

BODY = {"model": "m", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 8}


@pytest.fixture(scope="module")
def sim() -> Iterator[SimProcess]:
    with SimProcess(["--served-model-name", "m", "--ttft-ms", "1", "--itl-ms", "5"]) as s:
        yield s


def test_keep_alive_reuse_stream_and_non_stream(sim: SimProcess) -> None:
    async def run() -> None:
        s = RawSession()
        url = sim.base_url + "/chat/completions"
        for _ in range(3):
            async with s.post(url, data=orjson.dumps(BODY), headers={"content-type": "application/json"}) as r:
                assert r.status == 200 and r.headers.get("Content-Type").startswith("application/json")
                assert (await r.json())["usage"]["completion_tokens"] == 8
        assert len(s._all) == 1  # one connection, reused
        chunks = []
        async with s.post(url, data=orjson.dumps({**BODY, "stream": True})) as r:
            async for c in r.content.iter_any():
                chunks.append(c)
        assert len(chunks) > 3 and b"".join(chunks).endswith(b"data: [DONE]\n\n")
        async with s.get(sim.base_url + "/models", timeout=aiohttp.ClientTimeout(total=5)) as r:
            assert (await r.json())["data"][0]["id"] == "m"
        assert len(s._all) == 1
        await s.close()

    asyncio.run(run())


def test_connection_idle_too_long_is_not_reused(sim: SimProcess, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(httpclient, "_MAX_IDLE_S", 0.0)

    async def run() -> None:
        s = RawSession()
        url = sim.base_url + "/models"
        async with s.get(url) as r:
            await r.read()
        first = next(iter(s._all))
        await asyncio.sleep(0.01)
        async with s.get(url) as r:
            await r.read()
        assert first.closed and first not in s._all
        await s.close()

    asyncio.run(run())


def test_errors_use_aiohttp_classes() -> None:
    async def run() -> None:
        s = RawSession()
        with pytest.raises(aiohttp.ClientOSError):
            async with s.get(f"http://127.0.0.1:{free_port()}/v1/models") as r:
                await r.read()
        await s.close()

    asyncio.run(run())


class _LossSeenBeforeSend(RawSession):
    """Hands out a new connection only once the loop has run its `connection_lost`: the
    order in which an engine killed while accepting is seen, made deterministic."""

    def __init__(self) -> None:
        super().__init__()
        self.lost = asyncio.Event()

    def forget(self, c: httpclient._Conn) -> None:  # called from connection_lost
        super().forget(c)
        self.lost.set()

    async def acquire(self, key: httpclient.Key, connect_timeout: float | None,
                      fresh: bool = False) -> httpclient._Conn:
        conn = await super().acquire(key, connect_timeout, fresh)
        async with asyncio.timeout(5):
            await self.lost.wait()
        assert conn.closed and conn.error is not None
        return conn


def test_connection_lost_before_send_fails_the_request_instead_of_hanging() -> None:
    """Issue #14: a stream sent as its engine was SIGKILLed waited forever for response
    headers. Its fresh connection was lost before the request went out, when nothing
    waited on it yet, so the error was dropped; the read watchdog skipped closed
    connections. Now the request fails with a connection error (retried elsewhere)."""

    async def run() -> None:
        # An "engine" that accepts and immediately closes every connection.
        server = await asyncio.start_server(lambda r, w: w.close(), "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        s = _LossSeenBeforeSend()
        t = aiohttp.ClientTimeout(total=None, sock_connect=2, sock_read=0.3)
        try:
            async with asyncio.timeout(3):  # a hang fails here, as TimeoutError
                with pytest.raises(aiohttp.ServerDisconnectedError):
                    async with s.post(f"http://127.0.0.1:{port}/v1/chat/completions", data=b"{}", timeout=t):
                        pass
        finally:
            await s.close()
            server.close()
            await server.wait_closed()

    asyncio.run(run())


_OK = b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 2\r\n\r\n{}"


async def _close_all(server: asyncio.Server, writers: list[asyncio.StreamWriter]) -> None:
    """Closes the listener and every accepted connection (3.11's wait_closed does not)."""
    server.close()
    for w in writers:
        w.close()
        with contextlib.suppress(ConnectionError):
            await w.wait_closed()
    await server.wait_closed()


async def _read_request(r: asyncio.StreamReader) -> bool:
    """Reads one request (head + Content-Length body); False when the client closed."""
    try:
        head = await r.readuntil(b"\r\n\r\n")
    except (asyncio.IncompleteReadError, ConnectionError):
        return False
    length = next((int(line.split(b":", 1)[1]) for line in head.split(b"\r\n")
                   if line.lower().startswith(b"content-length:")), 0)
    await r.readexactly(length)
    return True


def test_kept_alive_connection_closed_by_the_engine_on_reuse_is_retried_fresh() -> None:
    """An engine closing an idle keep-alive connection just as the gateway reuses it (the
    race with uvicorn's 5 s keep-alive timeout) used to fail the request and mark a healthy
    backend unreachable. The engine never saw the request: one retry on a fresh connection."""

    async def run() -> None:
        connections: list[asyncio.StreamWriter] = []

        async def serve(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
            connections.append(w)
            first_connection = len(connections) == 1
            served = 0
            while await _read_request(r):
                if first_connection and served == 1:
                    break  # the reused connection: closed with no answer
                w.write(_OK)
                await w.drain()
                served += 1
            w.close()

        server = await asyncio.start_server(serve, "127.0.0.1", 0)
        url = f"http://127.0.0.1:{server.sockets[0].getsockname()[1]}/v1/x"
        s = RawSession()
        t = aiohttp.ClientTimeout(total=None, sock_connect=2, sock_read=2)
        try:
            async with asyncio.timeout(5):
                for _ in range(2):
                    async with s.post(url, data=b"{}", timeout=t) as resp:
                        assert resp.status == 200 and await resp.read() == b"{}"
            assert len(connections) == 2  # the second request went out again, on a new one
        finally:
            await s.close()
            await _close_all(server, connections)

    asyncio.run(run())


def test_fresh_connection_closed_without_answer_is_not_retried() -> None:
    """Only a reused connection gets the retry: an engine that drops a fresh connection's
    request is failing, and the pipeline must hear it (to try another backend)."""

    async def run() -> None:
        accepted: list[asyncio.StreamWriter] = []

        async def serve(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
            accepted.append(w)
            await _read_request(r)
            w.close()

        server = await asyncio.start_server(serve, "127.0.0.1", 0)
        url = f"http://127.0.0.1:{server.sockets[0].getsockname()[1]}/v1/x"
        s = RawSession()
        t = aiohttp.ClientTimeout(total=None, sock_connect=2, sock_read=2)
        try:
            async with asyncio.timeout(5):
                with pytest.raises(aiohttp.ServerDisconnectedError):
                    async with s.post(url, data=b"{}", timeout=t):
                        pass
            assert len(accepted) == 1
        finally:
            await s.close()
            await _close_all(server, accepted)

    asyncio.run(run())


def test_idle_read_timeout_and_abandoned_response_closes(sim: SimProcess) -> None:
    async def run() -> None:
        s = RawSession()
        url = sim.base_url + "/chat/completions"
        t = aiohttp.ClientTimeout(total=None, sock_read=0.2)
        with pytest.raises(TimeoutError):
            async with s.post(url, data=orjson.dumps(BODY), headers={"x-sim-ttft-ms": "2000"}, timeout=t) as r:
                await r.read()
        # Leaving a stream early closes its connection, which makes the engine abort.
        async with s.post(url, data=orjson.dumps({**BODY, "stream": True, "max_tokens": 500})) as r:
            await r.content.iter_any().__anext__()
        await asyncio.sleep(0.05)  # the transport reports the close on a later loop turn
        assert not s._all
        await s.close()

    asyncio.run(run())
    assert wait_until(lambda: sim.metrics().get("vllm:num_requests_running", 1) == 0, 2)


def test_gateway_with_the_aiohttp_fallback(sim: SimProcess) -> None:
    cfg = auth_yaml() + f"""
store: "memory://"
server: {{upstream_client: aiohttp}}
pools:
  m: {{endpoints: [{sim.base_url}], aliases: [a]}}
"""
    with GatewayServer(cfg) as gw, openai.OpenAI(base_url=gw.base_url, api_key=CLIENT_KEY, max_retries=0) as c:
        r = c.chat.completions.create(model="a", messages=[{"role": "user", "content": "x"}], max_tokens=4)
        assert r.model == "a" and r.usage is not None and r.usage.completion_tokens == 4
        chunks = list(c.chat.completions.create(model="m", messages=[{"role": "user", "content": "x"}],
                                                max_tokens=4, stream=True))
        assert "".join(ch.choices[0].delta.content or "" for ch in chunks if ch.choices)
        with httpx.stream("POST", gw.base_url + "/chat/completions", headers={"authorization": f"Bearer {CLIENT_KEY}"},
                          json={**BODY, "max_tokens": 500, "stream": True}) as resp:
            next(resp.iter_lines())
        assert wait_until(lambda: sim.metrics().get("vllm:num_requests_running", 1) == 0, 2)
        assert wait_until(lambda: gw.state.pools["m"].outstanding == 0, 1)


def test_a_reader_catching_up_on_a_backlog_lets_the_loop_run() -> None:
    # 100 pieces already buffered: taking them never has to wait, yet other tasks (other
    # requests, timers, probes) must run meanwhile rather than after the whole backlog.
    from gateway.proxy.client import _Conn

    async def main() -> tuple[int, int]:
        conn = _Conn(RawSession(), ("http", "127.0.0.1", 1))
        for _ in range(100):
            conn.on_body(b"x")
        conn.complete = True
        ticks = 0

        async def other() -> None:
            nonlocal ticks
            while True:
                ticks += 1
                await asyncio.sleep(0)

        task = asyncio.ensure_future(other())
        await asyncio.sleep(0)
        before, taken = ticks, 0
        while await conn.next_chunk() is not None:
            taken += 1
        task.cancel()
        return taken, ticks - before

    taken, others_ran = asyncio.run(main())
    assert taken == 100
    assert others_ran >= 10, others_ran  # one turn every few pieces (0 would be: after all 100)
