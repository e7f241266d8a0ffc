"""The ASGI application: routing by path, the small endpoints, and the subsystems' lifecycle.

`gateway serve` runs our own HTTP server (`server.serve`), which answers the inference
routes itself and hands every other path to this app. The app still serves the whole
API under any ASGI server (its inference routes through `AsgiExchange`).

Start-up reads top-down: HTTP client -> metrics -> meter -> limiter -> keys -> stored-response
affinity -> engines.
Shutdown reverses it, once the server has drained connections: stop engines -> flush
the usage ledger -> close clients.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any

from ..config import GatewayConfig
from ..errors import GatewayError, invalid_api_key, model_not_found
from ..keys.auth import KeyRing, bearer
from ..keys.sync import KeySync
from ..metering import Meter
from ..metrics import Metrics
from ..proxy import lookup, pipeline
from ..proxy.client import make_session
from ..ratelimit import Limiter
from ..routing.affinity import ResponseAffinity
from ..routing.pool import wake_pools
from ..state import GatewayState, build_names, build_pools
from .asgi import AsgiExchange, Receive, Scope, Send, header, send_json, send_response
from .routes import ERROR_BODIES, find_route

log = logging.getLogger("gateway")


def create_state(cfg: GatewayConfig, config_path: str | None = None) -> GatewayState:
    return GatewayState(
        config=cfg,
        config_path=config_path,
        pools=build_pools(cfg),
        names=build_names(cfg),
        keyring=KeyRing.from_config(cfg.auth),
    )


class GatewayApp:
    def __init__(self, state: GatewayState, spawn_engines: bool = True) -> None:
        self.state = state
        state.spawn_engines = spawn_engines
        self.started_at = int(time.time())
        self._admin: Any = None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        kind = scope["type"]
        if kind == "http":
            path: str = scope["path"]
            route = find_route(path)
            if route is not None:
                if scope["method"] != route.method:
                    # In the route's own dialect: an Anthropic client on /v1/messages reads Anthropic errors.
                    e = _method_not_allowed(route.method)
                    return await send_response(send, e.status, ERROR_BODIES[route.errors](e), _raw_headers(e))
                ex = AsgiExchange(scope, receive, send)
                if route.by_id:
                    return await lookup.handle(self.state, route, ex)
                return await pipeline.handle(self.state, route, ex)
            if path.startswith("/admin"):
                return await self._admin_app()(scope, receive, send)
            return await self._small(scope, send, path)
        if kind == "lifespan":
            return await self._lifespan(receive, send)
        # websockets etc. are not part of the API

    # --- small endpoints -----------------------------------------------------------------

    async def _small(self, scope: Scope, send: Send, path: str) -> None:
        method = scope["method"]
        try:
            if path == "/health":
                _only(method, "GET")
                if self.state.draining:
                    return await send_json(send, 503, {"status": "draining"})
                return await send_json(send, 200, {"status": "healthy"})
            if path == "/v1/models":
                _only(method, "GET")
                return await send_json(send, 200, {"object": "list", "data": self._model_cards(scope)})
            if path.startswith("/v1/models/"):
                _only(method, "GET")
                return await send_json(send, 200, self._model_card(scope, path[len("/v1/models/") :]))
            if path == "/metrics":
                _only(method, "GET")
                if self.state.metrics is None:
                    return await send_response(send, 200, b"", content_type=b"text/plain; version=0.0.4")
                body, ctype = self.state.metrics.render()
                return await send_response(send, 200, body, content_type=ctype.encode())
            raise GatewayError(404, f"Unknown path {path}.", "not_found")
        except GatewayError as e:
            await _error(send, e)

    def _key_for_listing(self, scope: Scope) -> Any:
        # Anthropic SDKs list models with `x-api-key`, like they call /v1/messages.
        key = self.state.keyring.lookup(bearer(header(scope, b"authorization")) or header(scope, b"x-api-key"))
        if key is None:
            raise invalid_api_key()
        return key

    def _card(self, name: str) -> dict[str, Any]:
        pool = self.state.pools[name]
        card: dict[str, Any] = {
            "id": name,
            "object": "model",
            "created": self.started_at,
            "owned_by": "gateway",
            "root": pool.cfg.spawn[0].model if pool.cfg.spawn else name,
            "parent": None,
        }
        # Known once an engine has answered /v1/models; never wait for one (Open WebUI times out).
        mml = next((b.max_model_len for b in pool.backends if b.max_model_len), None)
        if mml:
            card["max_model_len"] = mml
        return card

    def _model_cards(self, scope: Scope) -> list[dict[str, Any]]:
        key = self._key_for_listing(scope)
        return [self._card(n) for n in self.state.pools if key.allows(n)]

    def _model_card(self, scope: Scope, model: str) -> dict[str, Any]:
        key = self._key_for_listing(scope)
        pool = self.state.resolve(model)
        if pool is None or not key.allows(pool.name):
            raise model_not_found(model)
        card = self._card(pool.name)
        card["id"] = model
        return card

    def _admin_app(self) -> Any:
        if self._admin is None:
            from .admin import build_admin_app

            self._admin = build_admin_app(self.state)
        return self._admin

    # --- lifespan --------------------------------------------------------------------------

    async def _lifespan(self, receive: Receive, send: Send) -> None:
        while True:
            msg = await receive()
            if msg["type"] == "lifespan.startup":
                try:
                    await self.startup()
                except Exception as e:
                    log.exception("start-up failed")
                    await send({"type": "lifespan.startup.failed", "message": str(e)})
                    return
                await send({"type": "lifespan.startup.complete"})
            elif msg["type"] == "lifespan.shutdown":
                await self.shutdown()
                await send({"type": "lifespan.shutdown.complete"})
                return

    async def startup(self) -> None:
        s = self.state
        cfg = s.config
        s.http = make_session(cfg.server.upstream_client)
        s.metrics = Metrics(s)
        if cfg.metering.enabled:
            s.meter = await Meter.start(cfg)
        s.limiter = await Limiter.start(cfg, s.meter)
        s.key_sync = await KeySync.start(cfg, s.keyring)
        if cfg.redis_url:
            # Replicas share which engine stored each Responses id (routing/affinity.py).
            from ..metering.store_redis import connect as redis_connect

            s.affinity = ResponseAffinity(redis=redis_connect(cfg.redis_url))
        if s.keyring.mode == "none":
            log.warning("auth.mode is `none`: every client is served without a key")
        # The supervisor also health-probes external endpoints, so it runs for every config.
        if s.spawn_engines:
            from ..engines.supervisor import Supervisor

            s.supervisor = Supervisor(s)
            await s.supervisor.start()
        s.wake_task = asyncio.get_running_loop().create_task(wake_pools(s.pools), name="wake-pools")

    async def shutdown(self) -> None:
        s = self.state
        # 1. Refuse new work (the server has already stopped accepting and drained connections).
        s.draining = True
        if s.wake_task is not None:
            s.wake_task.cancel()
            s.wake_task = None
        # 2. Stop engines: their process groups get SIGTERM, then SIGKILL after the grace period.
        if s.supervisor is not None:
            await s.supervisor.stop()
        # 3. Flush the ledger and close shared clients.
        if s.key_sync is not None:
            await s.key_sync.close()
            s.key_sync = None
        if s.limiter is not None:
            await s.limiter.close()
        await s.affinity.close()
        if s.meter is not None:
            await s.meter.close()
        if s.http is not None:
            await s.http.close()


def _only(method: str, allowed: str) -> None:
    if method != allowed and not (allowed == "GET" and method == "HEAD"):
        raise _method_not_allowed(allowed)


def _method_not_allowed(allowed: str) -> GatewayError:
    return GatewayError(405, f"Method not allowed; use {allowed}.", "method_not_allowed", headers={"allow": allowed})


def _raw_headers(e: GatewayError) -> list[tuple[bytes, bytes]]:
    return [(k.encode(), v.encode()) for k, v in e.headers.items()]


async def _error(send: Send, e: GatewayError) -> None:
    await send_response(send, e.status, e.body(), _raw_headers(e))


def create_app(cfg: GatewayConfig, config_path: str | None = None, spawn_engines: bool = True) -> GatewayApp:
    return GatewayApp(create_state(cfg, config_path), spawn_engines=spawn_engines)
