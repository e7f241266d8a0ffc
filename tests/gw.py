"""Run a real gateway (our HTTP server on a free loopback port) inside the test process.

The server runs in its own thread and event loop, so tests can use blocking clients
(the `openai` SDK, httpx) and still read the gateway's state (outstanding counts).
"""

from __future__ import annotations

import asyncio
import hashlib
import threading
import time
from collections.abc import Callable, Coroutine
from typing import Any, TypeVar

from gateway import config as config_mod
from gateway.server.app import GatewayApp, create_app
from gateway.server.serve import HttpServer
from gateway.sim.testing import free_port

T = TypeVar("T")

CLIENT_KEY = "sk-test-client"
OTHER_KEY = "sk-test-other"
ADMIN_KEY = "sk-test-admin"


def sha(s: str) -> str:
    return hashlib.sha256(s.encode()).hexdigest()


def auth_yaml(other_models: str = '["only-this"]') -> str:
    return f"""
auth:
  admin_key_sha256: {sha(ADMIN_KEY)}
  keys:
    - {{name: client, key_sha256: {sha(CLIENT_KEY)}, models: ["*"]}}
    - {{name: other, key_sha256: {sha(OTHER_KEY)}, models: {other_models}}}
"""


class GatewayServer:
    def __init__(self, cfg: config_mod.GatewayConfig | str, spawn_engines: bool = True, config_path: str | None = None) -> None:
        if isinstance(cfg, str):
            cfg = config_mod.loads(cfg)
        self.port = free_port()
        self.app: GatewayApp = create_app(cfg, config_path=config_path, spawn_engines=spawn_engines)
        self.server: HttpServer | None = None
        self.loop: asyncio.AbstractEventLoop | None = None
        self.thread = threading.Thread(target=self._run, name=f"gateway-{self.port}", daemon=True)
        self.error: BaseException | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def base_url(self) -> str:
        return self.url + "/v1"

    @property
    def state(self) -> Any:
        return self.app.state

    def _run(self) -> None:
        self.loop = asyncio.new_event_loop()
        asyncio.set_event_loop(self.loop)
        try:
            self.loop.run_until_complete(self._serve())
        except BaseException as e:  # surfaced by start()
            self.error = e
        finally:
            self.loop.close()

    def start(self, timeout: float = 20.0) -> GatewayServer:
        self.thread.start()
        deadline = time.monotonic() + timeout
        while self.server is None or not self.server.started:
            if not self.thread.is_alive():
                raise RuntimeError(f"gateway failed to start: {self.error!r}")
            if time.monotonic() > deadline:
                raise TimeoutError("gateway did not start")
            time.sleep(0.01)
        return self

    def call(self, fn: Callable[[], Coroutine[Any, Any, T]], timeout: float = 30.0) -> T:
        """Run a coroutine on the gateway's loop and wait for its result."""
        assert self.loop is not None
        return asyncio.run_coroutine_threadsafe(fn(), self.loop).result(timeout)

    async def _serve(self) -> None:
        self.server = HttpServer(self.app)
        await self.server.serve("127.0.0.1", self.port)

    def stop(self) -> None:
        if self.server is not None:
            self.server.request_exit()
        self.thread.join(30)

    def __enter__(self) -> GatewayServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def wait_until(pred: Callable[[], bool], timeout: float = 5.0, interval: float = 0.01) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if pred():
            return True
        time.sleep(interval)
    return pred()
