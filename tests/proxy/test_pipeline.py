"""The pipeline's steps as units: parse, resolve model -> pool, describe the request."""

from __future__ import annotations

from typing import Any

import pytest

from gateway.config import GatewayConfig
from gateway.context import RequestContext, RequestIds
from gateway.errors import GatewayError
from gateway.keys.auth import Key
from gateway.proxy.pipeline import describe, parse_body, resolve
from gateway.server.app import create_state
from gateway.server.asgi import AsgiExchange
from gateway.server.routes import ROUTES
from gateway.state import GatewayState

CHAT, COMPLETIONS, EMBEDDINGS = (ROUTES[p] for p in ("/v1/chat/completions", "/v1/completions", "/v1/embeddings"))


def state() -> GatewayState:
    return create_state(GatewayConfig.model_validate({
        "store": "memory://", "auth": {"mode": "none"},
        "pools": {"chat": {"aliases": ["c"], "endpoints": ["http://127.0.0.1:9/v1"]},
                  "emb": {"kind": "embedding", "endpoints": ["http://127.0.0.1:10/v1"]}},
    }))  # fmt: skip


def code_of(e: pytest.ExceptionInfo[GatewayError]) -> tuple[int, str | None]:
    return e.value.status, e.value.code


@pytest.mark.parametrize("raw, message", [
    (b"", "empty"), (b"{", "not valid JSON"), (b"[1]", "must be a JSON object"),
])  # fmt: skip
def test_parse_body_rejects_non_objects(raw: bytes, message: str) -> None:
    with pytest.raises(GatewayError) as e:
        parse_body(raw)
    assert code_of(e) == (400, "invalid_json") and message in e.value.message


def test_resolve_by_name_or_alias_within_the_allowlist() -> None:
    st = state()
    anyone = Key(name="a", key_sha256="0" * 64)
    assert resolve(st, anyone, {"model": "c"}, CHAT) is st.pools["chat"]
    assert resolve(st, anyone, {"model": "chat"}, COMPLETIONS) is st.pools["chat"]
    narrow = Key(name="n", key_sha256="1" * 64, models=("emb",))
    with pytest.raises(GatewayError) as e:
        resolve(st, narrow, {"model": "chat"}, CHAT)
    assert code_of(e) == (404, "model_not_found")  # not allowed looks like not there


@pytest.mark.parametrize("body, status, code", [
    ({}, 400, "missing_model"), ({"model": 3}, 400, "invalid_type"), ({"model": "nope"}, 404, "model_not_found"),
])  # fmt: skip
def test_resolve_errors(body: dict[str, Any], status: int, code: str) -> None:
    with pytest.raises(GatewayError) as e:
        resolve(state(), Key(name="a", key_sha256="0" * 64), body, CHAT)
    assert code_of(e) == (status, code)


def test_wrong_pool_kind_names_the_routes_that_serve_it() -> None:
    st, k = state(), Key(name="a", key_sha256="0" * 64)
    with pytest.raises(GatewayError) as e:
        resolve(st, k, {"model": "emb"}, CHAT)
    assert e.value.message == "`emb` is an embedding model; use /v1/embeddings or /v1/rerank or /v1/score."
    with pytest.raises(GatewayError) as e:
        resolve(st, k, {"model": "chat"}, EMBEDDINGS)
    assert e.value.message == (
        "`chat` is a chat/completion model; use /v1/chat/completions or /v1/completions or /v1/responses"
        " or /v1/messages or /v1/messages/count_tokens."
    )
    assert code_of(e) == (400, "model_not_supported_on_endpoint")


def test_describe_reads_stream_usage_and_user() -> None:
    st = state()
    ctx = RequestContext(request_id=RequestIds().new(), endpoint="chat")
    body = {"model": "c", "stream": True, "stream_options": {"include_usage": True}, "user": "u1"}
    describe(ctx, _ex([]), st.pools["chat"], body, CHAT)
    assert (ctx.stream, ctx.include_usage_requested, ctx.user, ctx.model_requested) == (True, True, "u1", "c")
    # Embeddings never stream, whatever the body says; Open WebUI's header names the user.
    ctx = RequestContext(request_id="r", endpoint="embeddings")
    describe(ctx, _ex([(b"x-openwebui-user-id", b"owui")]), st.pools["emb"], {"model": "emb", "stream": True},
             EMBEDDINGS)
    assert (ctx.stream, ctx.user) == (False, "owui")
    with pytest.raises(GatewayError) as e:
        describe(ctx, _ex([]), st.pools["chat"], {"model": "c", "stream": "yes"}, CHAT)
    assert code_of(e) == (400, "invalid_type") and e.value.param == "stream"


def _ex(headers: list[tuple[bytes, bytes]]) -> AsgiExchange:
    async def nothing() -> dict[str, object]:
        raise AssertionError("describe reads headers only")

    async def sink(msg: object) -> None:
        raise AssertionError("describe sends nothing")

    return AsgiExchange({"method": "POST", "path": "/v1/chat/completions", "headers": headers}, nothing, sink)


def test_request_ids_are_unique_within_and_across_processes() -> None:
    ids = RequestIds()
    seen = {ids.new() for _ in range(100)}
    assert len(seen) == 100 and all(i.startswith("req-") for i in seen)
    # Another process (or a restart) draws another random prefix.
    other = RequestIds()
    assert not seen & {other.new() for _ in range(100)}
