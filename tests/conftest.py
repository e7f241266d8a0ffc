"""Shared fixtures: a real redis-server per test (fresh, isolated)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.redis_server import RedisServer


@pytest.fixture
def redis_server() -> Iterator[RedisServer]:
    with RedisServer() as rs:
        yield rs


@pytest.fixture
def redis_persistent() -> Iterator[RedisServer]:
    """A redis-server with AOF (fsync always), so data survives stop() + start()."""
    with RedisServer(persistent=True) as rs:
        yield rs
