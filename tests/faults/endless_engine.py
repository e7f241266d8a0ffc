"""An engine whose streams never end, for tests of clients that stop reading.

Each stream is 64 KiB events for as long as the reader keeps up, so whatever buffers sit
between the engine and a client that never reads (kernel socket buffers grow to
megabytes on loopback) fill up and the relay stalls for sure. `interval` spaces the
events out (an engine generating slowly): then only a client that reads nothing for a
while, not a full buffer, gets it cut. `streaming` counts the
streams it is writing: the engine's own gauge, which drops only when the gateway closes
its connection. `events` ends each stream after that many events (a finite answer
written faster than a slow client reads it). Runs in a thread with its own event loop; stop it with `close()`.
"""

from __future__ import annotations

import asyncio
import json
import threading

from gateway.sim.testing import free_port

_EVENT = b"data: " + json.dumps(
    {"object": "chat.completion.chunk", "model": "m", "choices": [{"index": 0, "delta": {"content": "x" * 65536}}]}
).encode() + b"\n\n"
_ANSWER = json.dumps({"id": "c", "object": "chat.completion", "model": "m", "choices": [
    {"index": 0, "message": {"role": "assistant", "content": "ok"}, "finish_reason": "stop"}],
    "usage": {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2}}).encode()
_MODELS = json.dumps({"object": "list", "data": [{"id": "m", "object": "model"}]}).encode()


class EndlessEngine:
    def __init__(self, interval: float = 0.0, events: int | None = None) -> None:
        self.port = free_port()
        self.interval = interval
        self.events = events
        self.streaming = 0
        self.streams = 0  # streams started, ever
        self._loop = asyncio.new_event_loop()
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._run, name="endless-engine", daemon=True)
        self._server: asyncio.Server | None = None

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    def __enter__(self) -> EndlessEngine:
        self._thread.start()
        assert self._ready.wait(10)
        return self

    def __exit__(self, *exc: object) -> None:
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)

    def _run(self) -> None:
        asyncio.set_event_loop(self._loop)
        self._server = self._loop.run_until_complete(asyncio.start_server(self._serve, "127.0.0.1", self.port))
        self._ready.set()
        self._loop.run_forever()
        self._server.close()
        # Connections the gateway keeps open: end their tasks before the loop goes.
        tasks = asyncio.all_tasks(self._loop)
        for t in tasks:
            t.cancel()
        self._loop.run_until_complete(asyncio.gather(*tasks, return_exceptions=True))
        self._loop.close()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                head = (await reader.readuntil(b"\r\n\r\n")).decode("latin-1").lower()
                length = 0
                for line in head.split("\r\n"):
                    if line.startswith("content-length:"):
                        length = int(line.split(":", 1)[1])
                body = json.loads(await reader.readexactly(length)) if length else {}
                if head.startswith("post") and body.get("stream"):
                    await self._stream(writer)
                    return
                data = _ANSWER if head.startswith("post") else _MODELS
                writer.write(b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: %d\r\n\r\n%b"
                             % (len(data), data))
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()

    async def _stream(self, writer: asyncio.StreamWriter) -> None:
        writer.write(b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ntransfer-encoding: chunked\r\n\r\n")
        chunk = b"%x\r\n%b\r\n" % (len(_EVENT), _EVENT)
        self.streaming += 1
        self.streams += 1
        try:
            sent = 0
            while self.events is None or sent < self.events:
                writer.write(chunk)
                await writer.drain()
                sent += 1
                if self.interval:
                    await asyncio.sleep(self.interval)
            done = b"data: [DONE]\n\n"
            writer.write(b"%x\r\n%b\r\n0\r\n\r\n" % (len(done), done))
            await writer.drain()
        finally:
            self.streaming -= 1
