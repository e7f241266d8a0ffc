"""vLLM's sleep-mode calls: `POST /sleep`, `POST /wake_up`, `GET /is_sleeping`, and for
level 2 `POST /collective_rpc {"method": "reload_weights"}`.

Each returns None on success, else what went wrong, so the caller can fall back: a sleep
that fails means "stop instead", a wake that fails means "restart".
The endpoints exist only when the engine runs with VLLM_SERVER_DEV_MODE=1 (else 404).

Level 2 discards the weights (level 1 keeps a copy in CPU RAM). A plain `/wake_up` after it
reallocates their memory and answers 200, and vLLM then serves from memory that holds no
model: wrong tokens, no error. So a level-2 wake is vLLM's documented sequence (docs
features/sleep_mode.md; vllm/entrypoints/serve/dev/rpc/api_router.py, v1/worker/gpu_worker.py
reload_weights): wake the weights' memory, reload the checkpoint into it in place, then wake
the KV cache, which resumes scheduling. An engine without `/collective_rpc` cannot do it: its
wake fails with `reload_unsupported`, and the caller stops using sleep for it.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

import aiohttp


@dataclass(frozen=True)
class WakeFailed:
    message: str
    reload_unsupported: bool = False  # level 2 and no /collective_rpc: sleeping again cannot work


async def _call(
    session: aiohttp.ClientSession, method: str, url: str, headers: dict[str, str], timeout: float,  # noqa: ASYNC109 - one HTTP call's own bound
    body: dict[str, str] | None = None,
) -> tuple[int, str]:
    data = None if body is None else json.dumps(body)
    if data is not None:
        headers = {**headers, "Content-Type": "application/json"}
    async with session.request(
        method, url, headers=headers, data=data, timeout=aiohttp.ClientTimeout(total=timeout)
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
    session: aiohttp.ClientSession, root: str, level: int, headers: dict[str, str], timeout: float  # noqa: ASYNC109
) -> WakeFailed | None:
    try:
        if level >= 2:
            problem = await _reload_wake(session, root, headers, timeout)
            if problem is not None:
                return problem
        else:
            status, body = await _call(session, "POST", root + "/wake_up", headers, timeout)
            if status != 200:
                return WakeFailed(f"POST /wake_up answered {status}: {body.strip() or '(empty)'}")
        # A wake can answer 200 and leave a part asleep (a tag that failed): ask.
        status, body = await _call(session, "GET", root + "/is_sleeping", headers, timeout)
    except (aiohttp.ClientError, TimeoutError) as e:
        return WakeFailed(f"wake failed: {e!r}")
    if status != 200 or '"is_sleeping":false' not in body.replace(" ", ""):
        return WakeFailed(f"still asleep after /wake_up (GET /is_sleeping: {status} {body.strip()})")
    return None


async def _reload_wake(
    session: aiohttp.ClientSession, root: str, headers: dict[str, str], timeout: float  # noqa: ASYNC109
) -> WakeFailed | None:
    status, body = await _call(session, "POST", root + "/wake_up?tags=weights", headers, timeout)
    if status != 200:
        return WakeFailed(f"POST /wake_up?tags=weights answered {status}: {body.strip() or '(empty)'}")
    status, body = await _call(session, "POST", root + "/collective_rpc", headers, timeout, {"method": "reload_weights"})
    if status != 200:
        return WakeFailed(
            f"level-2 wake: POST /collective_rpc reload_weights answered {status}: {body.strip() or '(empty)'}",
            reload_unsupported=status in (404, 405),
        )
    status, body = await _call(session, "POST", root + "/wake_up?tags=kv_cache", headers, timeout)
    if status != 200:
        return WakeFailed(f"POST /wake_up?tags=kv_cache answered {status}: {body.strip() or '(empty)'}")
    return None
