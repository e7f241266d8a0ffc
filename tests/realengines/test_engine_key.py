"""A vLLM whose `--api-key` differs from the pool's `api_key`: the engine's bare-string
401 `{"error":"Unauthorized"}` reaches the client as a 502, OpenAI-shaped (the client's
own key was fine; the gateway's configuration is wrong).

Its own gateway and vLLM (one more start-up, ~1-3 min), so the session's engines are
left alone; skipped with REALENGINES_ONLY=llamacpp.
"""

from __future__ import annotations

from collections.abc import Iterator

import httpx
import pytest

from .conftest import VLLM_CHAT, require
from .harness import CLIENT_KEY, Gateway, RealEngines, vllm_pool
from .test_errors import assert_openai_error


@pytest.fixture(scope="module")
def keyed(engines: RealEngines, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gateway]:
    require(VLLM_CHAT)
    # `--api-key` in args wins over the launcher's; the gateway still sends the pool's key.
    pool = vllm_pool(engines, ["--api-key", "the-engines-key"], api_key="not-the-engines-key", retries=0)
    gw = Gateway(tmp_path_factory.mktemp("keyedgw"), {"keyed": pool})
    try:
        gw.start()
        yield gw
    finally:
        gw.stop()


@pytest.mark.skip(reason="gateway gap found by this test: a spawned vLLM whose /v1/models answers 401 to the "
                  "pool's key never leaves `loading` (the gateway start waits forever, no error); fix the "
                  "readiness check to fail loudly, then enable this test")
def test_engine_401_is_a_502_for_the_client(keyed: Gateway) -> None:
    for stream in (False, True):
        r = httpx.post(keyed.base_url + "/completions", timeout=60,
                       json={"model": "keyed", "prompt": "Hello there", "max_tokens": 2, "stream": stream},
                       headers={"Authorization": f"Bearer {CLIENT_KEY}"})
        err = assert_openai_error(r, 502)
        assert err["code"] == "upstream_auth_failed" and "HTTP 401" in err["message"], err
        assert "Unauthorized" in err["message"]  # vLLM's bare string, quoted
