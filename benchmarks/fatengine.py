"""A minimal OpenAI-shaped engine whose streams are megabytes of large SSE events.

Why not the simulator: a client that never reads stalls a server only once the bytes in
flight exceed every buffer between them (on loopback the proxy's socket send buffer alone
starts near 1.3 MB), and the simulator's events are one word each, so filling those
buffers for 70 streams would cost the proxy seconds of CPU per stream and make a reading
client look as slow as a stalled one. Here each event carries 64 KiB, so a stream is
8 MiB in 128 events: a reading client gets it in milliseconds, a non-reading one stalls
the proxy's relay for as long as it keeps the socket open.

Serves `GET /health`, `GET /v1/models`, `GET /metrics` (empty), `GET /fat/state`
(`{"streaming": N}`), and `POST /v1/chat/completions`: a stream when the body asks for one,
else a small JSON answer with usage. It writes with back-pressure (`drain`), and counts the
streams it is in the middle of (`streaming`): a stalled proxy keeps them there.

    python -m benchmarks.fatengine --model NAME --port P   # prints "fatengine: listening on P"
"""

from __future__ import annotations

import argparse
import asyncio
import json
import signal
import subprocess
import sys
import time

EVENT_BYTES = 64 * 1024
EVENTS = 128


class FatEngineProcess:
    """The fat engine in its own process (on this process's CPUs), stopped by its PID."""

    def __init__(self, model: str) -> None:
        from gateway.sim.testing import free_port

        self.model, self.port = model, free_port()
        self.proc: subprocess.Popen[bytes] | None = None

    def __enter__(self) -> FatEngineProcess:
        from .procs import OUT, ROOT, wait_http

        log = OUT / "run" / "fatengine.log"
        log.parent.mkdir(parents=True, exist_ok=True)
        with open(log, "wb") as f:
            self.proc = subprocess.Popen([sys.executable, "-m", "benchmarks.fatengine", "--model", self.model,
                                          "--port", str(self.port)], stdout=f, stderr=subprocess.STDOUT,
                                         stdin=subprocess.DEVNULL, cwd=ROOT, start_new_session=True)
        try:
            wait_http(self.port, "/health", 30.0, self.proc, log)
        except BaseException:
            self.__exit__()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        p = self.proc
        if p is not None and p.poll() is None:
            p.terminate()
            try:
                p.wait(5)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    def streaming(self) -> int:
        """Streams the engine is in the middle of writing (-1 if it cannot say)."""
        import http.client

        try:
            c = http.client.HTTPConnection("127.0.0.1", self.port, timeout=2.0)
            c.request("GET", "/fat/state")
            n = int(json.loads(c.getresponse().read())["streaming"])
            c.close()
            return n
        except (OSError, ValueError, KeyError):
            return -1


class FatEngine:
    def __init__(self, model: str) -> None:
        self.model = model
        self.streaming = 0  # streams started and not yet finished (or abandoned)
        self.server: asyncio.Server | None = None
        self.port = 0

    async def start(self, port: int = 0) -> FatEngine:
        self.server = await asyncio.start_server(self._serve, "127.0.0.1", port)
        self.port = self.server.sockets[0].getsockname()[1]
        return self

    async def close(self) -> None:
        if self.server is not None:
            self.server.close()
            if hasattr(self.server, "close_clients"):  # Python 3.13+
                self.server.close_clients()

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                lines = head.decode("latin-1").split("\r\n")
                method, path, _ = lines[0].split(" ", 2)
                length = 0
                for line in lines[1:]:
                    if line.lower().startswith("content-length:"):
                        length = int(line.split(":", 1)[1])
                body = await reader.readexactly(length) if length else b""
                await self._answer(method, path.split("?")[0], body, writer)
        except (asyncio.IncompleteReadError, ConnectionError, asyncio.LimitOverrunError, ValueError):
            pass
        finally:
            writer.close()

    async def _answer(self, method: str, path: str, body: bytes, writer: asyncio.StreamWriter) -> None:
        if path == "/v1/models":
            data = {"object": "list", "data": [{"id": self.model, "object": "model", "owned_by": "bench"}]}
            return await _send(writer, 200, json.dumps(data).encode())
        if path == "/fat/state":
            return await _send(writer, 200, json.dumps({"streaming": self.streaming}).encode())
        if path in ("/health", "/metrics"):
            return await _send(writer, 200, b"", "text/plain")
        if method != "POST" or not path.endswith("/chat/completions"):
            return await _send(writer, 404, b'{"error": {"message": "not found"}}')
        stream = bool(json.loads(body or b"{}").get("stream"))
        cid, now = f"chatcmpl-fat{time.monotonic_ns()}", int(time.time())
        if not stream:
            answer = {"id": cid, "object": "chat.completion", "created": now, "model": self.model,
                      "choices": [{"index": 0, "message": {"role": "assistant", "content": "ok"},
                                   "finish_reason": "stop"}],
                      "usage": {"prompt_tokens": 8, "completion_tokens": 1, "total_tokens": 9}}
            return await _send(writer, 200, json.dumps(answer).encode())
        writer.write(b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ntransfer-encoding: chunked\r\n\r\n")
        self.streaming += 1
        try:
            filler = "x" * EVENT_BYTES
            for i in range(EVENTS):
                chunk = {"id": cid, "object": "chat.completion.chunk", "created": now, "model": self.model,
                         "choices": [{"index": 0, "delta": {"content": filler} if i else {"role": "assistant"},
                                      "finish_reason": None}]}
                _chunk(writer, b"data: " + json.dumps(chunk).encode() + b"\n\n")
                await writer.drain()
            _chunk(writer, b"data: [DONE]\n\n")
            writer.write(b"0\r\n\r\n")
            await writer.drain()
        finally:
            self.streaming -= 1


def _chunk(writer: asyncio.StreamWriter, data: bytes) -> None:
    writer.write(b"%x\r\n%s\r\n" % (len(data), data))


async def _send(writer: asyncio.StreamWriter, status: int, body: bytes, ctype: str = "application/json") -> None:
    reason = {200: "OK", 404: "Not Found"}[status]
    writer.write(f"HTTP/1.1 {status} {reason}\r\ncontent-type: {ctype}\r\ncontent-length: {len(body)}\r\n\r\n"
                 .encode() + body)
    await writer.drain()


async def _main(model: str, port: int) -> None:
    engine = await FatEngine(model).start(port)
    print(f"fatengine: listening on {engine.port}", flush=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    await engine.close()


if __name__ == "__main__":
    ap = argparse.ArgumentParser(prog="python -m benchmarks.fatengine")
    ap.add_argument("--model", required=True)
    ap.add_argument("--port", type=int, default=0)
    args = ap.parse_args()
    asyncio.run(_main(args.model, args.port))
