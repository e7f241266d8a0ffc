"""Embeddings answers: base64 for floats-only engines, `dimensions`."""

from __future__ import annotations

import struct

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from openai._models import construct_type
from openai._types import omit
from openai.lib._parsing._embeddings import parse_embedding_response
from openai.types import CreateEmbeddingResponse

from gateway.errors import GatewayError
from gateway.proxy.embeddings import check_dimensions, floats_to_base64


def emb_response(vectors: list[list[float]]) -> bytes:
    return orjson.dumps(
        {
            "object": "list",
            "data": [{"object": "embedding", "index": i, "embedding": v} for i, v in enumerate(vectors)],
            "model": "bge",
            "usage": {"prompt_tokens": 4, "total_tokens": 4},
        }
    )


def sdk_decode(body: bytes) -> list[list[float]]:
    """What `client.embeddings.create()` (no encoding_format given) hands its caller."""
    obj = construct_type(type_=CreateEmbeddingResponse, value=orjson.loads(body))
    parsed = parse_embedding_response(obj, encoding_format=omit)  # type: ignore[arg-type]
    return [d.embedding for d in parsed.data]


_f32 = st.floats(width=32, allow_nan=False, allow_infinity=False)


@settings(max_examples=300, deadline=None)
@given(vectors=st.lists(st.lists(_f32, min_size=1, max_size=16), min_size=1, max_size=4))
def test_base64_decodes_to_the_float_vectors(vectors: list[list[float]]) -> None:
    out = floats_to_base64(emb_response(vectors))
    assert all(isinstance(d["embedding"], str) for d in orjson.loads(out)["data"])
    assert sdk_decode(out) == vectors


def test_base64_is_little_endian_float32_and_keeps_the_rest() -> None:
    out = orjson.loads(floats_to_base64(emb_response([[1.0, -0.5], [0.1]])))
    import base64

    assert base64.b64decode(out["data"][0]["embedding"]) == struct.pack("<2f", 1.0, -0.5)
    assert out["data"][1]["index"] == 1 and out["model"] == "bge" and out["usage"]["prompt_tokens"] == 4
    # Doubles the engine printed are rounded to float32, as an engine encoding base64 would.
    assert sdk_decode(orjson.dumps(out))[1] == [struct.unpack("<f", struct.pack("<f", 0.1))[0]]


def test_base64_identity_when_already_encoded_or_not_embeddings() -> None:
    once = floats_to_base64(emb_response([[1.0]]))
    assert floats_to_base64(once) is once
    for body in (b"not json", b'{"error":{"message":"x"}}'):
        assert floats_to_base64(body) is body


def test_check_dimensions() -> None:
    check_dimensions({"input": "a"}, supports=False)
    check_dimensions({"input": "a", "dimensions": 256}, supports=True)
    with pytest.raises(GatewayError) as ei:
        check_dimensions({"input": "a", "dimensions": 256}, supports=False)
    e = ei.value
    assert (e.status, e.param, e.code, e.type) == (
        400,
        "dimensions",
        "unsupported_parameter",
        "invalid_request_error",
    )
