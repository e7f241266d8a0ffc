"""The balancing policies, as pure functions of the candidates."""

from __future__ import annotations

import concurrent.futures as cf
from collections.abc import Iterator
from typing import Any

import openai
import pytest

from gateway.routing.backend import Backend
from gateway.routing.policies import make_balancer
from gateway.sim.testing import SimProcess
from tests.gw import CLIENT_KEY, GatewayServer, auth_yaml

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


def test_balancers() -> None:
    bs = [Backend(id=f"b{i}", pool="p", url="u", max_concurrency=4) for i in range(3)]
    rr = make_balancer("round_robin")
    assert [rr.choose(bs).id for _ in range(4)] == ["b0", "b1", "b2", "b0"]
    lo = make_balancer("least_outstanding", seed=1)
    bs[0].outstanding, bs[1].outstanding, bs[2].outstanding = 2, 1, 3
    assert lo.choose(bs).id == "b1"
    bs[1].engine_waiting = 5  # the engine's own queue counts too
    assert lo.choose(bs).id == "b0"
    rnd = make_balancer("random", seed=3)
    assert {rnd.choose(bs).id for _ in range(50)} == {"b0", "b1", "b2"}
    with pytest.raises(ValueError):
        make_balancer("nope")


@pytest.mark.parametrize("balancer", ["least_outstanding", "speed_aware"])
def test_shortest_queue_sends_more_work_to_the_faster_backend(balancer: str) -> None:
    with SimProcess(["--served-model-name", "m", "--ttft-ms", "2", "--itl-ms", "2"]) as fast, \
         SimProcess(["--served-model-name", "m", "--ttft-ms", "2", "--itl-ms", "40"]) as slow:
        cfg = auth_yaml() + f"""
store: "memory://"
pools:
  m: {{endpoints: [{fast.base_url}, {slow.base_url}], max_concurrency: 32, balancer: {balancer}}}
"""
        with GatewayServer(cfg) as gw:
            c = client(gw)

            def one(_: int) -> None:
                c.chat.completions.create(model="m", messages=[{"role": "user", "content": "x"}], max_tokens=10)

            with cf.ThreadPoolExecutor(6) as ex:
                list(ex.map(one, range(48)))
            n_fast = fast.metrics()["vllm:request_success_total"]
            n_slow = slow.metrics()["vllm:request_success_total"]
            assert n_fast + n_slow == 48
            # Round robin would split 24/24; by outstanding work the fast engine takes most.
            assert n_fast >= 3 * n_slow, (n_fast, n_slow)
