"""A vLLM whose `--api-key` differs from the pool's `api_key`.

The readiness probe meets vLLM's bare-string 401 `{"error":"Unauthorized"}` on /v1/models
and fails the engine for good: state `failed` with the reason in /admin/backends (and so
in `gateway status`), the process stopped (~3 GiB freed), no restart loop (each would be
another minutes-long start for another 401). Requests to the pool are answered at once
with the 502 a request meeting the engine's 401 would get: OpenAI-shaped, code
`upstream_auth_failed`, quoting vLLM's words (the client's own key was fine; the
gateway's configuration is wrong). Before the fix the engine stayed `starting` until the
900 s start-up timeout, then restarted.

Its own gateway and vLLM (one more start-up, 1-5 min), so the session's engines are
left alone; skipped with REALENGINES_ONLY=llamacpp.
"""

from __future__ import annotations

import time
from collections.abc import Iterator

import httpx
import pytest

from tests.engines.util import pid_gone

from .conftest import VLLM_CHAT, require
from .harness import CLIENT_KEY, Gateway, RealEngines, vllm_pool, wait_for
from .test_errors import assert_openai_error


@pytest.fixture(scope="module")
def keyed(engines: RealEngines, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gateway]:
    require(VLLM_CHAT)
    # `--api-key` in args wins over the launcher's; the gateway still sends the pool's key.
    pool = vllm_pool(engines, ["--api-key", "the-engines-key"], api_key="not-the-engines-key", retries=0)
    gw = Gateway(tmp_path_factory.mktemp("keyedgw"), {"keyed": pool})
    try:
        t0 = time.monotonic()
        gw.start(wait_ready=False)
        # Bounded by vLLM's own start-up (the probe can only ask once the API server is up).
        if not wait_for(lambda: gw.backend("keyed")["state"] == "failed", pool["startup_timeout"], 1):
            raise RuntimeError(f"the keyed engine never failed: {gw.backends()}\n{gw.tail()}")
        print(f"\nkeyed vLLM failed after {time.monotonic() - t0:.0f} s (its start-up)")
        yield gw
    finally:
        gw.stop()


def test_engine_refusing_the_key_fails_visibly_for_good(keyed: Gateway) -> None:
    row = keyed.backend("keyed")
    assert row["state"] == "failed" and row["restarts"] == 0, row
    assert "rejected the gateway's key: /v1/models answered HTTP 401" in row["last_error"], row
    assert "Unauthorized" in row["last_error"]
    assert row["pid"] is None or wait_for(lambda: pid_gone(row["pid"]), 30), "the refused vLLM still runs"
    assert "rejected the gateway's key" in keyed.tail(200)  # the gateway's log says it too


def test_engine_401_is_a_502_for_the_client(keyed: Gateway) -> None:
    for stream in (False, True):
        t0 = time.monotonic()
        r = httpx.post(keyed.base_url + "/completions", timeout=60,
                       json={"model": "keyed", "prompt": "Hello there", "max_tokens": 2, "stream": stream},
                       headers={"Authorization": f"Bearer {CLIENT_KEY}"})
        assert time.monotonic() - t0 < 5, "queued for a backend that will never serve"
        err = assert_openai_error(r, 502)
        assert err["code"] == "upstream_auth_failed" and "HTTP 401" in err["message"], err
        assert "Unauthorized" in err["message"]  # vLLM's bare string, quoted
    assert keyed.backend("keyed")["restarts"] == 0
