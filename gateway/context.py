"""What the gateway knows about one request as it moves auth -> route -> proxy -> meter.

The proxy fills it in; when the request ends (every path, in `finally`) it is handed to
the meter, the metrics and the rate limiter, which read it and never block.
"""

from __future__ import annotations

import itertools
import os
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .keys.auth import Key
    from .ratelimit import Admission
    from .routing.backend import Backend
    from .routing.pool import Pool


# Per request (~200 bytes per streamed token in an OpenAI chunk): ~300 tokens are kept
# exactly, longer streams are extrapolated, and 1,000 concurrent streams hold at most
# ~64 MB however long they run.
DELIVERED_KEEP_BYTES = 64 * 1024


# slots: ~25 attributes are set and read per request on the hot path.
@dataclass(eq=False, slots=True)
class RequestContext:
    request_id: str
    endpoint: str  # `Route.endpoint`: "chat", "completions", "embeddings", "messages", ...
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
    usage_estimated: bool = False  # the gateway corrected `usage` by counting (proxy.n_usage)
    # The stream's usage is exact only if it completed (Messages: `message_start` has the
    # input alone); a cut stream's output is then estimated from what was delivered.
    usage_needs_end: bool = False
    # What the client received, kept only so a cut-short stream can be metered by counting
    # it: the relayed SSE events, or a non-stream body. Read by metering.estimate.
    delivered: list[bytes | bytearray] = field(default_factory=list)
    # Past DELIVERED_KEEP_BYTES only a count is kept (memory stays bounded however long
    # the stream); estimates extrapolate from the kept part.
    delivered_bytes: int = 0
    delivered_events: int = 0
    delivered_dropped: int = 0
    completed: bool = False  # the engine finished normally (stream reached [DONE] / full body)
    # Audio uploads (transcriptions) only: the file's duration from its header, None when
    # the format does not say. Billed when the engine reports none (metering.record).
    audio_seconds: float | None = None
    audio_upload: bool = False
    admission: Admission | None = None  # the rate limiter's token, settled when the request ends

    def keep_delivered(self, data: bytes) -> None:
        # A reference, not a copy: relayed events are immutable bytes, and copying each
        # one (trimmed of its envelope) cost ~5% of a stream's CPU in the profile.
        if self.delivered_bytes >= DELIVERED_KEEP_BYTES:
            self.delivered_dropped += 1
            return
        self.delivered.append(data)
        self.delivered_bytes += len(data)
        self.delivered_events += 1

    @property
    def ttft(self) -> float | None:
        return None if self.first_byte_at is None else self.first_byte_at - self.started

    @property
    def duration(self) -> float:
        return (self.ended or time.monotonic()) - self.started


class RequestIds:
    """Request ids without a syscall each: a random per-process prefix and a counter.

    96 random bits per process keep ids unique across replicas and restarts; the
    counter keeps them unique within the process.
    """

    __slots__ = ("_prefix", "_next")

    def __init__(self) -> None:
        self._prefix = "req-" + os.urandom(12).hex() + "-"
        self._next = itertools.count(1).__next__

    def new(self) -> str:
        return f"{self._prefix}{self._next():x}"
