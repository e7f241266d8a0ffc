"""The loop watchdog names what blocked the event loop, once per stall."""

from __future__ import annotations

import asyncio
import logging
import time

import pytest

from gateway.server.watchdog import LoopWatchdog


def _blocking_parse_of_a_huge_body() -> None:
    time.sleep(0.8)  # stands for any synchronous call made on the loop


def test_a_stall_is_logged_with_the_blocking_stack(caplog: pytest.LogCaptureFixture) -> None:
    async def main() -> LoopWatchdog:
        dog = LoopWatchdog(asyncio.get_running_loop(), threshold=0.3, tick=0.05).start()
        await asyncio.sleep(0.3)  # runs normally: no report
        assert dog.stalls == 0
        _blocking_parse_of_a_huge_body()
        await asyncio.sleep(0.3)  # the loop runs again: the stall's end is logged
        dog.stop()
        return dog

    with caplog.at_level(logging.WARNING, logger="gateway.watchdog"):
        dog = asyncio.run(main())
    assert dog.stalls == 1
    stalled = [r.getMessage() for r in caplog.records if "stalled" in r.getMessage()]
    assert len(stalled) == 1 and "_blocking_parse_of_a_huge_body" in stalled[0]
    resumed = [r.getMessage() for r in caplog.records if "ran again" in r.getMessage()]
    assert len(resumed) == 1
