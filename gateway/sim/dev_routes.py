"""vLLM's dev-mode endpoints (present only with VLLM_SERVER_DEV_MODE=1): sleep mode, the
reload_weights collective RPC and prefix-cache reset. Semantics are described in gateway.sim.sleep."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from urllib.parse import parse_qs

import orjson

from gateway.sim.errors import error_body
from gateway.sim.http import Connection, Request
from gateway.sim.sleep import SleepError
from gateway.sim.state import SimState

Endpoint = Callable[[Request, Connection], Awaitable[None]]


def dev_routes(st: SimState) -> dict[str, dict[str, Endpoint]]:
    async def sleep(req: Request, conn: Connection) -> None:
        query = parse_qs(req.query)
        raw_level = query.get("level", ["1"])[-1]
        if not raw_level.lstrip("-").isdigit():
            conn.send(400, error_body(400, f"level must be an integer, got {raw_level!r}"))
            return
        try:
            await st.engine.sleep(int(raw_level), query.get("mode", ["abort"])[-1])
        except SleepError as exc:
            conn.send(exc.status, error_body(exc.status, str(exc)))
            return
        conn.send(200, b"", content_type=b"text/plain; charset=utf-8")

    async def wake_up(req: Request, conn: Connection) -> None:
        tags = parse_qs(req.query).get("tags") or None
        try:
            await st.engine.wake_up(tags)
        except SleepError as exc:
            conn.send(exc.status, error_body(exc.status, str(exc)))
            return
        conn.send(200, b"", content_type=b"text/plain; charset=utf-8")

    async def is_sleeping(req: Request, conn: Connection) -> None:
        conn.send(200, orjson.dumps({"is_sleeping": st.engine.is_sleeping}))

    async def collective_rpc(req: Request, conn: Connection) -> None:
        # vLLM's dev route (serve/dev/rpc/api_router.py): 400 {"detail"} for a bad body, the
        # method runs on every worker; only reload_weights (level-2 wake) is simulated.
        try:
            body = orjson.loads(req.body)
        except orjson.JSONDecodeError as exc:
            conn.send(400, orjson.dumps({"detail": f"JSON decode error: {exc}"}))
            return
        if not isinstance(body, dict):
            conn.send(400, orjson.dumps({"detail": "Request body must be a JSON object"}))
            return
        method = body.get("method")
        if method is None:
            conn.send(400, orjson.dumps({"detail": "Missing 'method' in request body"}))
            return
        if method != "reload_weights":
            conn.send(500, error_body(500, f"collective_rpc: method {method!r} is not simulated"))
            return
        try:
            await st.engine.reload_weights()
        except SleepError as exc:
            conn.send(exc.status, error_body(exc.status, str(exc)))
            return
        conn.send(200, orjson.dumps({"results": [None]}))  # one worker, reload_weights returns None

    async def reset_prefix_cache(req: Request, conn: Connection) -> None:
        st.kv.reset()  # vLLM answers 200 even when blocks in use make it refuse (it logs a warning)
        conn.send(200, b"", content_type=b"text/plain; charset=utf-8")

    return {
        "/sleep": {"POST": sleep},
        "/wake_up": {"POST": wake_up},
        "/is_sleeping": {"GET": is_sleeping},
        "/collective_rpc": {"POST": collective_rpc},
        "/reset_prefix_cache": {"POST": reset_prefix_cache},
    }
