"""What the gateway knows about one request as it moves auth -> route -> proxy -> meter.

The proxy fills it in; when the request ends (every path, in `finally`) it is handed to
the meter, the metrics and the rate limiter, which read it and never block.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .auth import Key
    from .backends import Backend, Pool


# Per request: enough for any answer of a few thousand tokens, and 1,000 concurrent
# streams stay within ~256 MB in the worst case instead of growing without bound.
DELIVERED_KEEP_BYTES = 256 * 1024


@dataclass(eq=False)
class RequestContext:
    request_id: str
    endpoint: str  # "chat" | "completions" | "embeddings"
    started: float = field(default_factory=time.monotonic)
    started_wall: float = field(default_factory=time.time)
    key: Key | None = None
    pool: Pool | None = None
    model_requested: str | None = None  # what the client sent (pool name or alias)
    body: dict[str, Any] | None = None  # parsed request body; read-only
    stream: bool = False
    include_usage_requested: bool = False  # the client itself asked for stream usage
    user: str | None = None  # OpenAI `user` field or Open WebUI's forwarded user id
    backend: Backend | None = None
    attempts: int = 0
    status: int = 0  # HTTP status sent to the client (200 even if a stream ended in error)
    error: str | None = None  # why the request failed or was cut short, if it was
    first_byte_at: float | None = None  # monotonic time the first body byte reached the client
    upstream_started: float | None = None  # monotonic time the engine was first contacted
    upstream_time: float = 0.0  # seconds spent waiting on the engine (for overhead metrics)
    ended: float | None = None
    # Usage as reported by the engine (`usage` object), or None if it sent none.
    usage: dict[str, Any] | None = None
    # Bytes of SSE `data:` events actually delivered to the client, kept only so a cut-short
    # stream can be metered by counting what the client received.
    delivered: list[bytes] = field(default_factory=list)
    # Past DELIVERED_KEEP_BYTES only a count is kept (memory stays bounded however long
    # the stream); estimates extrapolate from the kept part.
    delivered_bytes: int = 0
    delivered_dropped: int = 0
    completed: bool = False  # the engine finished normally (stream reached [DONE] / full body)
    admission: Any = None  # ratelimit admission token, settled when the request ends

    def keep_delivered(self, data: bytes) -> None:
        if self.delivered_bytes < DELIVERED_KEEP_BYTES:
            self.delivered.append(data)
            self.delivered_bytes += len(data)
        else:
            self.delivered_dropped += 1

    @property
    def ttft(self) -> float | None:
        return None if self.first_byte_at is None else self.first_byte_at - self.started

    @property
    def duration(self) -> float:
        return (self.ended or time.monotonic()) - self.started
