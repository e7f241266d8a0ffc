"""make_plan: which body edits and answer rewrites a request gets, from its route and pool."""

from __future__ import annotations

from typing import Any

import orjson
import pytest

from gateway.config import PoolConfig
from gateway.context import RequestContext
from gateway.errors import GatewayError
from gateway.proxy.engine_errors import normalize_error
from gateway.proxy.plan import make_plan
from gateway.routing.pool import Pool


def pool(**cfg: Any) -> Pool:
    return Pool("p", PoolConfig.model_validate({"endpoints": ["http://127.0.0.1:9/v1"], **cfg}))


def plan_for(endpoint: str, body: dict[str, Any], p: Pool | None = None, **ctx_fields: Any) -> Any:
    ctx = RequestContext(request_id="r", endpoint=endpoint, model_requested=body.get("model"), **ctx_fields)
    raw = orjson.dumps(body)
    return make_plan(ctx, p or pool(), raw, orjson.loads(raw), "/" + endpoint, [], [(b"x-a", b"1")])


def test_streams_ask_for_usage_and_hide_it_unless_the_client_asked() -> None:
    plan = plan_for("completions", {"model": "m", "prompt": "x", "stream": True}, stream=True)
    assert plan.strip_usage and orjson.loads(plan.body)["stream_options"] == {"include_usage": True}
    plan = plan_for("completions", {"model": "m", "stream": True, "stream_options": {"include_usage": True}},
                    stream=True, include_usage_requested=True)
    assert not plan.strip_usage
    plan = plan_for("completions", {"model": "m", "prompt": "x"})
    assert not plan.strip_usage and plan.body == b'{"model":"m","prompt":"x"}'


def test_every_plan_normalises_errors_and_renames_the_model() -> None:
    for endpoint in ("chat", "completions", "embeddings"):
        plan = plan_for(endpoint, {"model": "alias"})
        assert plan.rewrite_error is normalize_error
        assert plan.rewrite_body is not None and plan.rewrite_body(b'{"model":"engine-name"}') == b'{"model":"alias"}'
        assert plan.extra_headers == [(b"x-a", b"1")] and plan.path == "/" + endpoint


def test_chat_drops_echoed_reasoning_and_splits_think_tags_when_streaming() -> None:
    body = {"model": "m", "messages": [{"role": "assistant", "content": "a", "reasoning_content": "r"}]}
    plan = plan_for("chat", body)
    assert orjson.loads(plan.body)["messages"] == [{"role": "assistant", "content": "a"}]
    assert plan.before_done is None
    split = plan_for("chat", {"model": "m", "messages": [], "stream": True}, pool(reasoning="think_tags"), stream=True)
    assert split.before_done is not None and split.rewrite_event is not None


def test_embeddings_for_a_floats_only_engine_ask_for_floats_and_encode_here() -> None:
    p = pool(kind="embedding", engine_base64=False)
    plan = plan_for("embeddings", {"model": "m", "input": "x", "encoding_format": "base64"}, p)
    assert orjson.loads(plan.body)["encoding_format"] == "float"
    out = orjson.loads(plan.rewrite_body(b'{"data":[{"embedding":[1.0]}],"model":"e"}'))
    assert out == {"data": [{"embedding": "AACAPw=="}], "model": "m"}
    with pytest.raises(GatewayError) as e:
        plan_for("embeddings", {"model": "m", "input": "x", "dimensions": 8}, p)
    assert e.value.param == "dimensions"
