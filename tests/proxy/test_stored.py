"""proxy/stored.py: a Responses API response can only be continued, retrieved and cancelled
on the engine that stored it. Two simulated vLLM engines with `--responses-store` behind a
round-robin pool (without affinity every other follow-up would land on the engine that
never saw the id and get its 404), and two gateway replicas sharing Redis.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import ExitStack

import httpx
import openai
import pytest

from gateway.routing.affinity import Holder
from gateway.routing.backend import Backend
from gateway.sim.testing import SimProcess
from tests.redis_server import RedisServer

from ..gw import CLIENT_KEY, GatewayServer, auth_yaml

FAST = ["--ttft-ms", "1", "--itl-ms", "1", "--responses-store"]
CLIENT = {"authorization": f"Bearer {CLIENT_KEY}"}


def config(sims: list[SimProcess], redis_url: str | None = None) -> str:
    urls = ", ".join(s.base_url for s in sims)
    store = f'redis: "{redis_url}"\n' if redis_url else ""
    return auth_yaml() + store + f"""
store: "memory://"
pools:
  chat: {{endpoints: [{urls}], balancer: round_robin, aliases: [chat-alias]}}
  other: {{endpoints: [{sims[0].base_url}]}}
"""


@pytest.fixture(scope="module")
def sims() -> Iterator[list[SimProcess]]:
    with ExitStack() as stack:
        yield [stack.enter_context(SimProcess(FAST)) for _ in range(2)]


@pytest.fixture
def gw(sims: list[SimProcess]) -> Iterator[GatewayServer]:
    with GatewayServer(config(sims)) as g:
        yield g


def oai(gw: GatewayServer) -> openai.OpenAI:
    return openai.OpenAI(base_url=gw.base_url, api_key=CLIENT_KEY, max_retries=0)


def holder(gw: GatewayServer, rid: str) -> Holder | None:
    async def look() -> Holder | None:
        return await gw.state.affinity.lookup(rid)

    return gw.call(look)


def stored(gw: GatewayServer, c: openai.OpenAI) -> tuple[str, Holder, Backend]:
    """A new stored response: its id, the gateway's record of it, and the backend holding it."""
    r = c.responses.create(model="chat", input="remember", max_output_tokens=8)
    h = holder(gw, r.id)
    assert h is not None
    b = gw.state.pools["chat"].get(h.backend)
    assert b is not None
    return r.id, h, b


def test_follow_ups_go_to_the_engine_that_stored_the_response(gw: GatewayServer) -> None:
    with oai(gw) as c:
        firsts = [c.responses.create(model="chat", input=f"remember {i}", max_output_tokens=8) for i in range(4)]
        streamed = list(c.responses.create(model="chat", input="remember s", max_output_tokens=8, stream=True))
        firsts.append(streamed[-1].response)
        holders = {r.id: holder(gw, r.id) for r in firsts}
        assert all(holders.values()), holders  # recorded from bodies and from `response.created`
        assert len({h.backend for h in holders.values() if h}) == 2  # round robin used both engines
        for r in firsts:
            for alias in ("chat", "chat-alias"):
                nxt = c.responses.create(model=alias, input="and then?", previous_response_id=r.id,
                                         max_output_tokens=8)
                # The answer is stored too, on the same engine: a chain stays on one backend.
                assert holder(gw, nxt.id) == holders[r.id]
            got = c.responses.retrieve(r.id)
            assert got.id == r.id
            with pytest.raises(openai.BadRequestError):  # the holder's own answer: finished, not cancellable
                c.responses.cancel(r.id)


def test_unknown_previous_id_is_routed_as_usual_and_the_engine_answers(gw: GatewayServer) -> None:
    with oai(gw) as c, pytest.raises(openai.NotFoundError) as nf:
        c.responses.create(model="chat", input="x", previous_response_id="resp_neverseen", max_output_tokens=4)
    assert set(nf.value.body) == {"message", "type", "param", "code"}  # type: ignore[arg-type]


def test_a_gone_backend_is_a_clear_error_everywhere(gw: GatewayServer) -> None:
    with oai(gw) as c:
        rid, h, b = stored(gw, c)
        pool = gw.state.pools["chat"]

        async def remove() -> None:
            pool.remove(b)

        gw.call(remove)
        with pytest.raises(openai.NotFoundError) as nf:
            c.responses.create(model="chat", input="more", previous_response_id=rid, max_output_tokens=4)
        err = nf.value.body
        assert err["code"] == "stored_response_lost" and err["param"] == "previous_response_id"  # type: ignore[index]
        assert h.backend in err["message"]  # type: ignore[index]
        for call in (c.responses.retrieve, c.responses.cancel):
            with pytest.raises(openai.NotFoundError) as nf:
                call(rid)
            assert nf.value.body["code"] == "stored_response_lost"  # type: ignore[index]


def test_a_restarted_engine_lost_its_store(gw: GatewayServer) -> None:
    with oai(gw) as c:
        rid, h, b = stored(gw, c)
        b.restarts += 1  # what the supervisor does when it restarts a spawned engine
        with pytest.raises(openai.NotFoundError) as nf:
            c.responses.create(model="chat", input="more", previous_response_id=rid, max_output_tokens=4)
        assert nf.value.body["code"] == "stored_response_lost"  # type: ignore[index]


def test_holder_cooling_off_is_a_503_not_a_wrong_engine(gw: GatewayServer) -> None:
    with oai(gw) as c:
        rid, h, b = stored(gw, c)
        b.mark_connect_failure("test: refused")
        with pytest.raises(openai.InternalServerError) as e:
            c.responses.create(model="chat", input="more", previous_response_id=rid, max_output_tokens=4)
        assert e.value.status_code == 503
        assert e.value.body["code"] == "stored_response_unavailable"  # type: ignore[index]
        b.down_until = 0.0
        nxt = c.responses.create(model="chat", input="more", previous_response_id=rid, max_output_tokens=4)
        assert nxt.id


def test_continuing_with_a_model_the_holder_does_not_serve_says_which_to_use(
    gw: GatewayServer, sims: list[SimProcess]
) -> None:
    with oai(gw) as c:
        # `other` is served by sims[0] only: find a response stored on sims[1].
        for _ in range(4):
            r = c.responses.create(model="chat", input="remember", max_output_tokens=8)
            h = holder(gw, r.id)
            if h is not None and h.backend.endswith(sims[1].base_url):
                break
        else:
            pytest.fail("round robin never used the second engine")
        with pytest.raises(openai.BadRequestError) as e:
            c.responses.create(model="other", input="more", previous_response_id=r.id, max_output_tokens=4)
        assert e.value.body["code"] == "stored_on_other_model" and "`chat`" in e.value.body["message"]  # type: ignore[index]


def test_a_pool_sharing_the_holders_engine_may_continue_it(gw: GatewayServer, sims: list[SimProcess]) -> None:
    with oai(gw) as c:
        for _ in range(4):
            r = c.responses.create(model="chat", input="remember", max_output_tokens=8)
            h = holder(gw, r.id)
            if h is not None and h.backend.endswith(sims[0].base_url):
                break
        else:
            pytest.fail("round robin never used the first engine")
        nxt = c.responses.create(model="other", input="more", previous_response_id=r.id, max_output_tokens=4)
        assert nxt.model == "other"


def test_replicas_sharing_redis_pin_each_others_responses(sims: list[SimProcess], redis_server: RedisServer) -> None:
    with GatewayServer(config(sims, redis_server.url)) as a, GatewayServer(config(sims, redis_server.url)) as b:
        with oai(a) as ca, oai(b) as cb:
            made = [ca.responses.create(model="chat", input=f"r{i}", max_output_tokens=8) for i in range(4)]
            # Put b's round robin out of step with a's, so that luck cannot pass this test.
            cb.chat.completions.create(model="chat", messages=[{"role": "user", "content": "hi"}], max_tokens=2)
            for r in made:
                # Without the shared map, replica b's round robin would miss half of these.
                nxt = cb.responses.create(model="chat", input="more", previous_response_id=r.id,
                                          max_output_tokens=4)
                assert nxt.id
                got = httpx.get(b.base_url + f"/responses/{r.id}", headers=CLIENT, timeout=10)
                assert got.status_code == 200 and got.json()["id"] == r.id


def test_non_responses_routes_never_touch_the_map(gw: GatewayServer) -> None:
    with oai(gw) as c:
        c.chat.completions.create(model="chat", messages=[{"role": "user", "content": "hi"}], max_tokens=4)
        list(c.chat.completions.create(model="chat", messages=[{"role": "user", "content": "hi"}], max_tokens=4,
                                       stream=True))
    assert len(gw.state.affinity) == 0
