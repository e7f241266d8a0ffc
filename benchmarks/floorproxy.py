"""The least a Python HTTP proxy on the gateway's stack can do per request (issue #13).

Not a product: a yardstick. It runs on the same stack as the gateway's hot path (uvloop,
httptools) and does only what no L7 proxy can skip: parse the client's request far
enough to know where it ends, send its bytes unchanged over a pooled keep-alive
connection to the one engine, parse the engine's response far enough to know where it
ends (so the connection can be reused), and write the engine's bytes to the client as
they arrive. No routing, no body parsing, no auth, no metering, no metrics, no timeouts,
no error handling beyond closing. Whatever CPU per request this process spends, a Python
gateway on this stack spends at least that; the peers scenario measures it beside the
gateway and the Rust routers in the same run, which says how far the ~1.0x-vllm-router
target is from what CPython can reach at all.

    python -m benchmarks.floorproxy --port P --upstream 127.0.0.1:E
"""

from __future__ import annotations

import argparse
import asyncio
from collections import deque

import httptools
import uvloop


class Upstream(asyncio.Protocol):
    """One keep-alive connection to the engine; serves one client request at a time."""

    def __init__(self, pool: Pool) -> None:
        self.pool = pool
        self.parser = httptools.HttpResponseParser(self)
        self.transport: asyncio.Transport | None = None
        self.client: Client | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        client = self.client
        if client is not None and client.transport is not None:
            client.transport.write(data)
        self.parser.feed_data(data)

    def on_message_complete(self) -> None:
        client, self.client = self.client, None
        self.pool.idle.append(self)
        if client is not None:
            client.response_done()

    def connection_lost(self, exc: Exception | None) -> None:
        if self in self.pool.idle:
            self.pool.idle.remove(self)
        if self.client is not None and self.client.transport is not None:
            self.client.transport.close()


class Pool:
    def __init__(self, host: str, port: int) -> None:
        self.host, self.port = host, port
        self.idle: deque[Upstream] = deque()

    def send(self, client: Client, request: bytes) -> None:
        if self.idle:
            up = self.idle.pop()
            up.client = client
            assert up.transport is not None
            up.transport.write(request)
            return
        asyncio.get_running_loop().create_task(self._open(client, request))

    async def _open(self, client: Client, request: bytes) -> None:
        loop = asyncio.get_running_loop()
        _, up = await loop.create_connection(lambda: Upstream(self), self.host, self.port)
        up.client = client
        assert up.transport is not None
        up.transport.write(request)


class Client(asyncio.Protocol):
    def __init__(self, pool: Pool) -> None:
        self.pool = pool
        self.parser = httptools.HttpRequestParser(self)
        self.transport: asyncio.Transport | None = None
        self.pending: list[bytes] = []

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        self.pending.append(data)
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserError:
            if self.transport is not None:
                self.transport.close()

    def on_message_complete(self) -> None:
        request = b"".join(self.pending)
        self.pending.clear()
        self.pool.send(self, request)

    def response_done(self) -> None:
        pass  # keep-alive: the next request may come

    def connection_lost(self, exc: Exception | None) -> None:
        self.transport = None


async def main(port: int, upstream: str) -> None:
    host, up_port = upstream.rsplit(":", 1)
    pool = Pool(host, int(up_port))
    loop = asyncio.get_running_loop()
    server = await loop.create_server(lambda: Client(pool), "127.0.0.1", port, backlog=4096)
    async with server:
        await server.serve_forever()


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--upstream", required=True, help="host:port of the engine")
    args = ap.parse_args()
    uvloop.run(main(args.port, args.upstream))
