"""Embedding mode: input shapes, float/base64 (the SDK's default), dimensions, wrong-task errors."""

from __future__ import annotations

import base64
import json
import math
import struct
from collections.abc import Iterator

import pytest
from openai import OpenAI

from gateway import tokens
from gateway.sim.testing import SimProcess


@pytest.fixture(scope="module")
def embed_sim() -> Iterator[SimProcess]:
    with SimProcess(["--embedding", "--embedding-dim", "64", "--served-model-name", "emb", "--ttft-ms", "1",
                     "--max-model-len", "128"]) as sim:
        yield sim


def _post(sim: SimProcess, body: dict[str, object]) -> tuple[int, dict[str, object]]:
    status, raw = sim.request("POST", "/v1/embeddings", body)
    return status, json.loads(raw)


def test_float_and_base64_agree(embed_sim: SimProcess) -> None:
    texts = ["hello world", "another text", "hello world"]
    status, r = _post(embed_sim, {"model": "emb", "input": texts})
    assert status == 200 and r["object"] == "list" and r["model"] == "emb"
    data = r["data"]
    assert isinstance(data, list) and [d["index"] for d in data] == [0, 1, 2]
    vecs = [d["embedding"] for d in data]
    assert all(len(v) == 64 and abs(math.fsum(x * x for x in v) - 1.0) < 1e-5 for v in vecs)
    assert vecs[0] == vecs[2] and vecs[0] != vecs[1]  # deterministic per input text
    assert r["usage"] == {"prompt_tokens": sum(tokens.count_text(t) for t in texts),
                          "total_tokens": sum(tokens.count_text(t) for t in texts), "completion_tokens": 0,
                          "prompt_tokens_details": None}
    status, b = _post(embed_sim, {"model": "emb", "input": texts, "encoding_format": "base64"})
    decoded = [list(struct.unpack("<64f", base64.b64decode(d["embedding"]))) for d in b["data"]]  # type: ignore[union-attr]
    assert decoded == vecs
    with OpenAI(base_url=embed_sim.base_url, api_key="x", max_retries=0) as client:
        sdk = client.embeddings.create(model="emb", input=texts)  # the SDK asks for base64 and decodes
        assert [d.embedding for d in sdk.data] == vecs
        assert sdk.usage.prompt_tokens == r["usage"]["prompt_tokens"]  # type: ignore[index]


def test_token_id_inputs_and_dimensions(embed_sim: SimProcess) -> None:
    ids = tokens.encode("hello world")
    status, r = _post(embed_sim, {"model": "emb", "input": ids})
    assert status == 200 and r["usage"]["prompt_tokens"] == len(ids)  # type: ignore[index]
    status, r2 = _post(embed_sim, {"model": "emb", "input": [ids, [1, 2, 3]]})
    assert status == 200 and len(r2["data"]) == 2  # type: ignore[arg-type]
    assert r2["data"][0]["embedding"] == r["data"][0]["embedding"]  # type: ignore[index]
    status, r3 = _post(embed_sim, {"model": "emb", "input": "x", "dimensions": 16})
    v = r3["data"][0]["embedding"]  # type: ignore[index]
    assert len(v) == 16 and abs(math.fsum(x * x for x in v) - 1.0) < 1e-5


@pytest.mark.parametrize("body", [
    {"model": "emb"}, {"model": "emb", "input": []}, {"model": "emb", "input": [1.5]},
    {"model": "emb", "input": "x", "encoding_format": "hex"}, {"model": "emb", "input": "x", "dimensions": 65},
    {"model": "emb", "input": "x", "dimensions": 0}, {"model": "emb", "input": " the" * 200},
])
def test_bad_embedding_inputs(embed_sim: SimProcess, body: dict[str, object]) -> None:
    status, r = _post(embed_sim, body)
    assert status == 400 and r["error"]["type"] == "BadRequestError"  # type: ignore[index]


def test_wrong_task_and_model(embed_sim: SimProcess) -> None:
    status, r = _post(embed_sim, {"model": "nope", "input": "x"})
    assert status == 404
    for path in ("/v1/chat/completions", "/v1/completions"):
        status, raw = embed_sim.request("POST", path, {"model": "emb", "prompt": "x",
                                                       "messages": [{"role": "user", "content": "x"}]})
        # vLLM 0.32 does not mount the generation routes for an embedding model
        assert (status, json.loads(raw)) == (404, {"detail": "Not Found"})
    m = embed_sim.metrics()
    assert m["vllm:prompt_tokens_total"] > 0 and m["vllm:generation_tokens_total"] == 0
