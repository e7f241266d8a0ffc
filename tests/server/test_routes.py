"""The route table: one typed entry per inference route, read by the app and the pipeline."""

from __future__ import annotations

import asyncio
import dataclasses
from typing import Any

import orjson
import pytest

from gateway.config import GatewayConfig
from gateway.server.app import create_app
from gateway.server.routes import ERROR_BODIES, ROUTES, Route, paths_for


def test_table_is_keyed_by_path_and_entries_are_frozen() -> None:
    assert list(ROUTES) == [
        "/v1/chat/completions", "/v1/completions", "/v1/embeddings", "/v1/responses", "/v1/messages",
        "/v1/messages/count_tokens", "/v1/rerank", "/rerank", "/v2/rerank", "/v1/score", "/score",
        "/tokenize", "/detokenize", "/v1/audio/transcriptions",
    ]  # fmt: skip
    for path, route in ROUTES.items():
        # Each spelling goes to the same spelling on the engine (vLLM serves them all).
        upstream = route.upstream_path if route.upstream_root else "/v1" + route.upstream_path
        assert route.path == path and upstream == path
        assert route.errors in ERROR_BODIES and route.kinds
    with pytest.raises(dataclasses.FrozenInstanceError):
        ROUTES["/v1/completions"].endpoint = "x"  # type: ignore[misc]
    assert not ROUTES["/v1/embeddings"].streams and ROUTES["/v1/chat/completions"].streams


def test_paths_for_each_pool_kind_follow_table_order() -> None:
    assert paths_for("chat") == [
        "/v1/chat/completions", "/v1/completions", "/v1/responses", "/v1/messages", "/v1/messages/count_tokens",
    ]  # fmt: skip
    assert paths_for("embedding") == ["/v1/embeddings", "/v1/rerank", "/v1/score"]
    assert paths_for("rerank") == ["/v1/rerank", "/v1/score"]
    assert paths_for("transcription") == ["/v1/audio/transcriptions"]


def test_each_route_declares_its_usage_stream_and_error_dialects() -> None:
    from gateway.proxy import dialects, usage

    assert ROUTES["/v1/responses"].usage is usage.RESPONSES and ROUTES["/v1/responses"].stream is dialects.RESPONSES
    msgs = ROUTES["/v1/messages"]
    assert msgs.errors == "anthropic" and msgs.x_api_key and msgs.usage is usage.MESSAGES
    assert ROUTES["/v1/messages/count_tokens"].errors == "anthropic" and not ROUTES["/v1/messages/count_tokens"].streams
    assert all(ROUTES[p].usage is usage.POOLING for p in ("/v1/rerank", "/rerank", "/v2/rerank", "/v1/score", "/score"))
    assert ROUTES["/tokenize"].usage is usage.NO_TOKENS and ROUTES["/tokenize"].upstream_root
    assert ROUTES["/v1/audio/transcriptions"].body == "multipart"
    assert not ROUTES["/v1/audio/transcriptions"].stream.inject_usage
    # Only the Anthropic routes take x-api-key; everything else is OpenAI-shaped.
    assert {p for p, r in ROUTES.items() if r.x_api_key} == {"/v1/messages", "/v1/messages/count_tokens"}
    assert {p for p, r in ROUTES.items() if r.errors == "anthropic"} == {"/v1/messages", "/v1/messages/count_tokens"}


def _call(app: Any, method: str, path: str) -> tuple[int, dict[bytes, bytes], bytes]:
    sent: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(msg: dict[str, Any]) -> None:
        sent.append(msg)

    scope = {"type": "http", "method": method, "path": path, "headers": []}
    asyncio.run(app(scope, receive, send))
    start, body = sent[0], b"".join(m.get("body", b"") for m in sent[1:])
    return start["status"], dict(start["headers"]), body


def test_app_dispatches_by_the_table_and_answers_405_with_allow() -> None:
    app = create_app(GatewayConfig.model_validate(
        {"store": "memory://", "auth": {"mode": "none"}, "pools": {"m": {"endpoints": ["http://127.0.0.1:9/v1"]}}}
    ))  # fmt: skip
    for path, route in ROUTES.items():
        status, headers, body = _call(app, "GET", path)
        assert status == 405 and headers[b"allow"] == b"POST"
        err = orjson.loads(body)
        if route.errors == "anthropic":  # in the route's own dialect
            assert err["type"] == "error" and err["error"]["type"] == "invalid_request_error", err
        else:
            assert err["error"]["code"] == "method_not_allowed"
    # Not in the table: the small endpoints' 404, not the pipeline.
    status, _, body = _call(app, "POST", "/v1/nothing")
    assert status == 404 and orjson.loads(body)["error"]["code"] == "not_found"


def test_a_route_is_one_entry() -> None:
    r = Route("/v1/x", "x", "/x", frozenset({"chat"}))
    assert (r.method, r.errors, r.streams) == ("POST", "openai", True)


def test_id_routes_match_by_shape_after_the_exact_table() -> None:
    from gateway.server.routes import ID_ROUTES, find_route

    retrieve, cancel = (r for r in sorted(ID_ROUTES, key=lambda r: r.path))
    assert find_route("/v1/responses") is ROUTES["/v1/responses"]
    assert find_route("/v1/responses/resp_1") is retrieve and retrieve.method == "GET" and retrieve.by_id
    assert find_route("/v1/responses/resp_1/cancel") is cancel and cancel.method == "POST"
    assert find_route("/v1/responses/") is None and find_route("/v1/responses/a/b") is None
    assert find_route("/v1/responses//cancel") is None and find_route("/v1/nothing") is None
