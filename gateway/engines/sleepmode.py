"""vLLM's sleep-mode calls: `POST /sleep`, `POST /wake_up`, `GET /is_sleeping`.

Each returns None on success, else what went wrong (one line), so the caller can fall
back: a sleep that fails means "stop instead", a wake that fails means "restart".
The endpoints exist only when the engine runs with VLLM_SERVER_DEV_MODE=1 (else 404).
"""

from __future__ import annotations

import aiohttp


async def _call(
    session: aiohttp.ClientSession, method: str, url: str, headers: dict[str, str], timeout: float  # noqa: ASYNC109 - one HTTP call's own bound
) -> tuple[int, str]:
    async with session.request(
        method, url, headers=headers, timeout=aiohttp.ClientTimeout(total=timeout)
    ) as r:
        return r.status, (await r.text())[:300]


async def sleep(
    session: aiohttp.ClientSession, root: str, level: int, headers: dict[str, str], timeout: float  # noqa: ASYNC109
) -> str | None:
    # mode=wait: the gateway drained the engine first, but if the drain timed out the
    # engine finishes what it has rather than aborting it (vLLM's default is abort).
    url = f"{root}/sleep?level={level}&mode=wait"
    try:
        status, body = await _call(session, "POST", url, headers, timeout)
    except (aiohttp.ClientError, TimeoutError) as e:
        return f"POST /sleep failed: {e!r}"
    if status != 200:
        return f"POST /sleep answered {status}: {body.strip() or '(empty)'}"
    return None


async def wake(
    session: aiohttp.ClientSession, root: str, headers: dict[str, str], timeout: float  # noqa: ASYNC109
) -> str | None:
    try:
        status, body = await _call(session, "POST", root + "/wake_up", headers, timeout)
        if status != 200:
            return f"POST /wake_up answered {status}: {body.strip() or '(empty)'}"
        # A wake can answer 200 and leave a part asleep (a tag that failed): ask.
        status, body = await _call(session, "GET", root + "/is_sleeping", headers, timeout)
    except (aiohttp.ClientError, TimeoutError) as e:
        return f"wake failed: {e!r}"
    if status != 200 or '"is_sleeping":false' not in body.replace(" ", ""):
        return f"still asleep after /wake_up (GET /is_sleeping: {status} {body.strip()})"
    return None
