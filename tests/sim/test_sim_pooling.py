"""Rerank and score on pooling sims (cross-encoder and embedding), and the wrong-model errors."""

from __future__ import annotations

import json
import math
from collections.abc import Iterator
from typing import Any

import pytest

from gateway import tokens
from gateway.sim.testing import SimProcess

DOCS = ["the cat sat on the mat", "stock prices fell", "a kitten sleeps", "quantum field theory"]


@pytest.fixture(scope="module")
def ce_sim() -> Iterator[SimProcess]:
    with SimProcess(["--runner", "pooling", "--convert", "classify", "--served-model-name", "rr", "--ttft-ms", "1",
                     "--max-model-len", "64", "--api-key", "k"]) as sim:
        yield sim


@pytest.fixture(scope="module")
def emb_sim() -> Iterator[SimProcess]:
    with SimProcess(["--runner", "pooling", "--convert", "embed", "--embedding-dim", "32",
                     "--served-model-name", "emb", "--ttft-ms", "1"]) as sim:
        yield sim


def _post(sim: SimProcess, path: str, body: Any, headers: dict[str, str] | None = None) -> tuple[int, Any]:
    status, raw = sim.request("POST", path, body, {"Authorization": "Bearer k", **(headers or {})})
    return status, json.loads(raw)


def test_rerank_shape_order_top_n_and_usage(ce_sim: SimProcess) -> None:
    before = ce_sim.metrics()
    status, r = _post(ce_sim, "/v1/rerank", {"model": "rr", "query": "cats", "documents": DOCS})
    assert status == 200 and set(r) == {"id", "model", "usage", "results"}
    assert r["id"].startswith("score-") and r["model"] == "rr"
    res = r["results"]
    assert sorted(x["index"] for x in res) == [0, 1, 2, 3]
    scores = [x["relevance_score"] for x in res]
    assert scores == sorted(scores, reverse=True) and all(0.0 < s < 1.0 for s in scores)
    assert all(x["document"] == {"text": DOCS[x["index"]], "multi_modal": None} for x in res)
    n = sum(tokens.count_text("cats") + tokens.count_text(d) for d in DOCS)
    assert r["usage"] == {"prompt_tokens": n, "total_tokens": n}
    after = ce_sim.metrics()
    assert after["vllm:prompt_tokens_total"] - before["vllm:prompt_tokens_total"] == n
    stop = 'vllm:request_success_total{engine="0",model_name="rr",finished_reason="stop"}'
    assert after[stop] - before[stop] == len(DOCS)
    status, top = _post(ce_sim, "/v1/rerank", {"model": "rr", "query": "cats", "documents": DOCS, "top_n": 2})
    assert top["results"] == res[:2]  # deterministic scores: same order, cut to top_n
    assert top["usage"] == r["usage"]  # every document is still scored


def test_rerank_paths_and_auth(ce_sim: SimProcess) -> None:
    body = {"query": "q", "documents": [{"text": "d1"}, "d2"]}  # model optional, dict documents allowed
    outs = []
    for path in ("/rerank", "/v1/rerank", "/v2/rerank"):
        status, r = _post(ce_sim, path, body)
        assert status == 200
        outs.append([(x["index"], x["relevance_score"]) for x in r["results"]])
    assert outs[0] == outs[1] == outs[2]
    # vLLM's auth middleware guards /v1 and /v2 only
    assert ce_sim.request("POST", "/rerank", body)[0] == 200
    assert ce_sim.request("POST", "/score", {"text_1": "a", "text_2": "b"})[0] == 200
    for path in ("/v1/rerank", "/v2/rerank", "/v1/score"):
        assert ce_sim.request("POST", path, body) == (401, b'{"error":"Unauthorized"}')


def test_score_pairing(ce_sim: SimProcess) -> None:
    status, one_n = _post(ce_sim, "/v1/score", {"model": "rr", "text_1": "cats", "text_2": DOCS})
    assert status == 200 and one_n["object"] == "list" and one_n["id"].startswith("score-")
    assert [d["index"] for d in one_n["data"]] == [0, 1, 2, 3]
    assert all(d["object"] == "score" for d in one_n["data"])
    n = sum(tokens.count_text("cats") + tokens.count_text(d) for d in DOCS)
    assert one_n["usage"] == {"prompt_tokens": n, "total_tokens": n, "completion_tokens": 0,
                              "prompt_tokens_details": None}
    status, rr = _post(ce_sim, "/rerank", {"query": "cats", "documents": DOCS})
    by_index = {x["index"]: x["relevance_score"] for x in rr["results"]}
    assert [d["score"] for d in one_n["data"]] == [by_index[i] for i in range(4)]  # same cross-encoder
    status, nn = _post(ce_sim, "/score", {"text_1": ["cats"] * 4, "text_2": DOCS})
    assert [d["score"] for d in nn["data"]] == [d["score"] for d in one_n["data"]]
    status, qd = _post(ce_sim, "/v1/score", {"queries": "cats", "documents": DOCS})
    assert [d["score"] for d in qd["data"]] == [d["score"] for d in one_n["data"]]
    status, bad = _post(ce_sim, "/v1/score", {"text_1": ["a", "b"], "text_2": ["a", "b", "c"]})
    assert status == 400 and bad["error"]["message"] == "Input lengths must be either 1:1, 1:N or N:N"


@pytest.mark.parametrize(("path", "body", "status", "param"), [
    ("/v1/rerank", {"model": "nope", "query": "q", "documents": ["d"]}, 404, "model"),
    ("/v1/rerank", {"query": "q"}, 400, "body.documents"),
    ("/v1/rerank", {"documents": ["d"]}, 400, "body.query"),
    ("/v1/rerank", {"query": "q", "documents": []}, 400, "body.documents"),
    ("/v1/rerank", {"query": "q", "documents": ["d"], "top_n": "2"}, 400, "body.top_n"),
    ("/v1/score", {"text_1": "a"}, 400, "body.text_2"),
    ("/v1/score", {"text_1": "a", "text_2": "word " * 70}, 400, None),
])
def test_errors(ce_sim: SimProcess, path: str, body: dict[str, Any], status: int, param: str | None) -> None:
    got, r = _post(ce_sim, path, body)
    assert got == status and set(r["error"]) == {"message", "type", "param", "code"}
    assert r["error"]["param"] == param and r["error"]["code"] == status


def test_embed_model_scores_by_cosine(emb_sim: SimProcess) -> None:
    status, e = _post(emb_sim, "/v1/embeddings", {"model": "emb", "input": ["cats", *DOCS]})
    vecs = [d["embedding"] for d in e["data"]]
    status, s = _post(emb_sim, "/v1/score", {"model": "emb", "text_1": "cats", "text_2": DOCS})
    assert status == 200
    for i, d in enumerate(s["data"]):
        cos = math.fsum(a * b for a, b in zip(vecs[0], vecs[i + 1], strict=True))
        assert abs(d["score"] - cos) < 1e-5
    n = tokens.count_text("cats") + sum(tokens.count_text(d) for d in DOCS)  # each text embedded once
    assert s["usage"]["prompt_tokens"] == n
    status, r = _post(emb_sim, "/v1/rerank", {"query": "cats", "documents": DOCS})
    assert status == 200 and len(r["results"]) == 4


def test_wrong_model_kinds() -> None:
    with SimProcess(["--served-model-name", "chat", "--ttft-ms", "1"]) as sim:
        for path, api in (("/v1/rerank", "Rerank (Score) API"), ("/rerank", "Rerank (Score) API"),
                          ("/v1/score", "Score API")):
            body = {"text_1": "a", "text_2": "b"} if "score" in path else {"query": "q", "documents": ["d"]}
            status, raw = sim.request("POST", path, body)
            assert status == 501 and json.loads(raw)["error"]["message"] == f"The model does not support {api}"
    with SimProcess(["--runner", "pooling", "--convert", "classify", "--served-model-name", "rr"]) as sim:
        for path, api in (("/v1/chat/completions", "Chat Completions API"), ("/v1/completions", "Completions API"),
                          ("/v1/embeddings", "Embeddings API"), ("/v1/responses", "Responses API")):
            status, raw = sim.request("POST", path, {"model": "rr", "messages": [{"role": "user", "content": "x"}],
                                                     "prompt": "x", "input": "x"})
            assert status == 501 and json.loads(raw)["error"]["message"] == f"The model does not support {api}"
