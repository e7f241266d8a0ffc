"""Discovery: what an external engine serves and its context length, from its /v1/models."""

from __future__ import annotations

import asyncio

import aiohttp

from gateway.engines.discovery import discover, discover_until_known
from gateway.routing.backend import Backend
from gateway.sim.testing import SimProcess, free_port


def _backend(url: str) -> Backend:
    return Backend(id="b", pool="p", url=url, max_concurrency=4)


def test_discover_fills_served_model_and_max_model_len() -> None:
    with SimProcess(["--served-model-name", "served-a", "alias-b", "--max-model-len", "2048"]) as sim:
        b = _backend(sim.base_url)

        async def main() -> bool:
            async with aiohttp.ClientSession() as s:
                return await discover(s, b)

        assert asyncio.run(main()) is True
        assert (b.served_model, b.max_model_len) == ("served-a", 2048)


def test_discover_reports_failure_without_touching_the_backend() -> None:
    b = _backend(f"http://127.0.0.1:{free_port()}/v1")

    async def main() -> bool:
        async with aiohttp.ClientSession() as s:
            return await discover(s, b, wait=1.0)

    assert asyncio.run(main()) is False
    assert (b.served_model, b.max_model_len) == (None, None)


def test_discover_until_known_waits_for_an_engine_that_comes_up_later() -> None:
    port = free_port()
    b = _backend(f"http://127.0.0.1:{port}/v1")

    async def main() -> None:
        async with aiohttp.ClientSession() as s:
            task = asyncio.create_task(discover_until_known(s, b))
            await asyncio.sleep(0.2)  # a window in which the first attempts fail
            assert not task.done() and b.served_model is None
            with SimProcess(["--served-model-name", "late"], port=port):
                await asyncio.wait_for(task, 20)

    asyncio.run(main())
    assert b.served_model == "late"
