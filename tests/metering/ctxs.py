"""Builders for finished `RequestContext`s and SSE events, shared by the metering,
rate-limit and metrics tests."""

from __future__ import annotations

from typing import Any

import orjson

from gateway.config import PoolConfig
from gateway.context import RequestContext
from gateway.keys.auth import Key
from gateway.routing.backend import Backend
from gateway.routing.pool import Pool

_POOLS: dict[str, Pool] = {}


def pool(name: str = "chat") -> Pool:
    if name not in _POOLS:
        _POOLS[name] = Pool(name, PoolConfig(endpoints=["http://127.0.0.1:9/v1"]))
    return _POOLS[name]


def backend(pool_name: str = "chat", n: int = 0) -> Backend:
    return Backend(id=f"{pool_name}/b{n}", pool=pool_name, url="http://127.0.0.1:9/v1", max_concurrency=8)


def key(name: str = "alice", **limits: Any) -> Key:
    return Key(name=name, key_sha256=f"{name:0<64}"[:64], **limits)


def sse(obj: dict[str, Any]) -> bytes:
    return b"data: " + orjson.dumps(obj) + b"\n\n"


def chunk(choices: list[dict[str, Any]], usage: dict[str, Any] | None = None) -> bytes:
    obj: dict[str, Any] = {"id": "c1", "object": "chat.completion.chunk", "choices": choices}
    if usage is not None:
        obj["usage"] = usage
    return sse(obj)


def ctx(
    endpoint: str = "chat",
    key_name: str | None = "alice",
    pool_name: str | None = "chat",
    usage: dict[str, Any] | None = None,
    body: dict[str, Any] | None = None,
    delivered: list[bytes] | None = None,
    stream: bool = False,
    status: int = 200,
    dispatched: bool = True,
    user: str | None = None,
    started_wall: float | None = None,
    request_id: str = "req-1",
    **extra: Any,
) -> RequestContext:
    c = RequestContext(request_id=request_id, endpoint=endpoint)
    if started_wall is not None:
        c.started_wall = started_wall
    c.key = key(key_name) if key_name else None
    c.pool = pool(pool_name) if pool_name else None
    c.model_requested = pool_name
    c.body = body if body is not None else {"model": pool_name, "messages": [{"role": "user", "content": "hi"}]}
    c.stream = stream
    c.status = status
    c.user = user
    c.usage = usage
    c.delivered = delivered or []
    if dispatched and pool_name:
        c.backend = backend(pool_name)
        c.upstream_started = c.started
    c.completed = usage is not None
    c.ended = c.started + 0.25
    for k, v in extra.items():
        setattr(c, k, v)
    return c


def usage(prompt: int, completion: int) -> dict[str, int]:
    return {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion}
