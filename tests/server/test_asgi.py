"""ASGI helpers: bounded body reads, responses, cancelling work on disconnect."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from typing import Any

import openai
import pytest

from gateway.errors import GatewayError
from gateway.server.asgi import ClientDisconnected, read_body, run_until_disconnect
from gateway.sim.testing import SimProcess
from tests.gw import CLIENT_KEY, GatewayServer, auth_yaml

FAST = ["--ttft-ms", "1", "--itl-ms", "1", "--max-num-seqs", "64"]


_clients: list[openai.OpenAI] = []


@pytest.fixture(autouse=True)
def _close_clients() -> Iterator[None]:
    yield
    while _clients:
        _clients.pop().close()


def client(gw: GatewayServer, key: str = CLIENT_KEY, **kw: Any) -> openai.OpenAI:
    c = openai.OpenAI(base_url=gw.base_url, api_key=key, max_retries=0, **kw)
    _clients.append(c)
    return c


def test_body_limit_413() -> None:
    with SimProcess(["--served-model-name", "m", *FAST]) as sim:
        cfg = auth_yaml() + f"""
store: "memory://"
server: {{max_body_bytes: 2048}}
pools:
  m: {{endpoints: [{sim.base_url}]}}
"""
        with GatewayServer(cfg) as gw:
            big = "x" * 5000
            with pytest.raises(openai.APIStatusError) as e:
                client(gw).chat.completions.create(model="m", messages=[{"role": "user", "content": big}])
            assert e.value.status_code == 413 and e.value.body["code"] == "request_too_large"  # type: ignore[index]
            # The same request under the limit goes through.
            client(gw).chat.completions.create(model="m", messages=[{"role": "user", "content": "small"}], max_tokens=2)



def _receiver(*messages: dict[str, Any], then_block: bool = True) -> Any:
    queue = list(messages)

    async def receive() -> dict[str, Any]:
        if queue:
            return queue.pop(0)
        if then_block:
            await asyncio.Event().wait()
        return {"type": "http.disconnect"}

    return receive


def test_read_body_joins_chunks_and_enforces_the_limit() -> None:
    scope: dict[str, Any] = {"headers": []}
    parts = ({"type": "http.request", "body": b"ab", "more_body": True}, {"type": "http.request", "body": b"cd"})
    assert asyncio.run(read_body(scope, _receiver(*parts), 10)) == b"abcd"
    with pytest.raises(GatewayError) as e:
        asyncio.run(read_body(scope, _receiver(*parts), 3))
    assert e.value.status == 413
    # A declared length over the limit is refused before reading anything.
    declared: dict[str, Any] = {"headers": [(b"content-length", b"99")]}
    with pytest.raises(GatewayError):
        asyncio.run(read_body(declared, _receiver(), 10))
    with pytest.raises(ClientDisconnected):
        asyncio.run(read_body(scope, _receiver({"type": "http.disconnect"}), 10))


def test_run_until_disconnect_cancels_the_work_when_the_client_leaves() -> None:
    async def main() -> tuple[bool, bool]:
        cancelled = False

        async def work() -> None:
            nonlocal cancelled
            try:
                await asyncio.Event().wait()
            except asyncio.CancelledError:
                cancelled = True
                raise

        left = await run_until_disconnect(work(), _receiver({"type": "http.disconnect"}))
        return left, cancelled

    assert asyncio.run(main()) == (True, True)


def test_run_until_disconnect_returns_false_when_work_finishes_first() -> None:
    async def main() -> bool:
        async def work() -> None:
            await asyncio.sleep(0)

        return await run_until_disconnect(work(), _receiver())

    assert asyncio.run(main()) is False


def test_a_real_cancellation_is_not_swallowed() -> None:
    async def main() -> None:
        task = asyncio.current_task()
        assert task is not None

        async def work() -> None:
            task.cancel()
            await asyncio.sleep(1)

        await run_until_disconnect(work(), _receiver())

    with pytest.raises(asyncio.CancelledError):
        asyncio.run(main())
