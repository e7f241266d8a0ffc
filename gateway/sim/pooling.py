"""Rerank (/rerank, /v1/rerank, /v2/rerank) and score (/score, /v1/score) for pooling sims.

vLLM serves these for pooling models (`--runner pooling`): a cross-encoder (`--convert
classify`, e.g. a *-reranker model) scores each (query, document) pair; an embedding model
(`--convert embed`) scores by the cosine similarity of the two embeddings. The sim does the
same: classify scores are deterministic numbers in (0, 1) seeded by the pair's text, embed
scores are the cosine of the very vectors /v1/embeddings returns for the two texts.

Shapes (vLLM 0.32 vllm/entrypoints/pooling/scoring/{protocol,serving}.py, JSONResponse(model_dump());
ServingScores.request_id_prefix is "score" for both routes):
- rerank: `{"id": "score-...", "model", "usage": {"prompt_tokens", "total_tokens"},
  "results": [{"index", "document": {"text", "multi_modal": null}, "relevance_score"}]}`,
  best first, cut to `top_n` when top_n > 0.
- score: `{"id": "score-...", "object": "list", "created", "model", "data": [{"index",
  "object": "score", "score"}], "usage": {"prompt_tokens", "total_tokens", "completion_tokens": 0,
  "prompt_tokens_details": null}}`; `text_1`/`text_2` (or `queries`/`documents`) pair up 1:1,
  1:N or N:N, else 400.
- a generative (chat) sim answers 501 NotImplementedError "The model does not support Rerank
  (Score) API" / "... Score API", as vLLM 0.32 does when no score handler exists.

Prompt tokens: cross-encoder = cl100k tokens of query + document per pair (cl100k has no
[CLS]/[SEP]); embed = tokens of every text embedded. They count in
vllm:prompt_tokens_total; the request holds a batch slot for TTFT + prefill time.
"""

from __future__ import annotations

import asyncio
import math
import os
import time
from typing import Any

import orjson

from gateway import tokens
from gateway.sim import textgen
from gateway.sim.errors import ApiError, bad_request, not_supported
from gateway.sim.http import Connection, Request
from gateway.sim.protocol import ensure_served
from gateway.sim.state import SimState
from gateway.sim.steps import maybe_fail
from gateway.sim.validation import BodyError, load_body, opt_int, opt_str


def _text_item(v: Any, where: str) -> str:
    if isinstance(v, str):
        return v
    if isinstance(v, dict) and isinstance(v.get("text"), str):
        return str(v["text"])
    raise BodyError(where, "string_type", "Input should be a valid string (multimodal inputs are not simulated)")


def _text_list(v: Any, where: str) -> list[str]:
    if v is None:
        raise BodyError(where, "missing", "Field required")
    if isinstance(v, list):
        if not v:
            raise BodyError(where, "too_short", "List should have at least 1 item")
        return [_text_item(x, f"{where}.{i}") for i, x in enumerate(v)]
    return [_text_item(v, where)]


class PoolingApi:
    def __init__(self, st: SimState) -> None:
        self.st = st

    def _embed_key(self, text: str) -> list[float]:
        cfg = self.st.cfg
        # the same key /v1/embeddings uses for a string input (protocol.Prompt.key)
        return textgen.embedding(textgen.stable_hash(cfg.seed, "embed", b"s" + text.encode()), cfg.embedding_dim)

    def _scores(self, pairs: list[tuple[str, str]]) -> tuple[list[float], int]:
        """(score per pair, prompt tokens)."""
        cfg = self.st.cfg
        if cfg.embedding:
            vecs = {t: self._embed_key(t) for pair in pairs for t in pair}
            n_tokens = sum(tokens.count_text(t) for t in vecs)
            scores = [sum(a * b for a, b in zip(vecs[q], vecs[d], strict=True)) for q, d in pairs]
            return scores, n_tokens
        scores = []
        n_tokens = 0
        for q, d in pairs:
            u = textgen.stable_hash(cfg.seed, "score", q, d) / 2.0**64
            scores.append(1.0 / (1.0 + math.exp(-8.0 * (u - 0.5))))  # a sigmoid of a logit, like a cross-encoder
            n_tokens += tokens.count_text(q) + tokens.count_text(d)
        return scores, n_tokens

    def _check_len(self, pairs: list[tuple[str, str]]) -> None:
        limit = self.st.cfg.max_model_len
        for q, d in pairs:
            n = tokens.count_text(q) + tokens.count_text(d)
            if n > limit:
                raise bad_request(f"This model's maximum context length is {limit} tokens. However, you requested "
                                  f"{n} tokens in the input for score. Please reduce the length of the input.")

    async def _hold_slot(self, prompt_tokens: int, n_seqs: int) -> None:
        """Pooling runs one forward pass: a slot for TTFT + prefill; counted like embeddings."""
        st, cfg = self.st, self.st.cfg
        loop = asyncio.get_running_loop()
        t_arrive = loop.time()
        acquired = False
        try:
            await st.sched.acquire()
            acquired = True
            delay = st.sched.jittered((cfg.ttft_ms + cfg.prefill_ms_per_token * prompt_tokens) / 1000.0)
            if delay > 0.0:
                await asyncio.sleep(delay)
        except asyncio.CancelledError:
            st.metrics.finished(["abort"] * n_seqs, loop.time() - t_arrive)
            raise
        finally:
            if acquired:
                st.sched.release()
        st.metrics.prompt_tokens += prompt_tokens
        st.metrics.finished(["stop"] * n_seqs, loop.time() - t_arrive)

    def _model(self, body: dict[str, Any], api: str) -> str:
        cfg = self.st.cfg
        if not cfg.is_pooling:
            raise not_supported(api)
        model = opt_str(body, "model") or cfg.model_name  # optional in vLLM's pooling requests
        ensure_served(model, cfg)
        return model

    async def rerank(self, req: Request, conn: Connection) -> None:
        body = load_body(req.body)
        query = body.get("query")
        if query is None:
            raise BodyError("query", "missing", "Field required")
        q = _text_item(query, "query")
        docs = _text_list(body.get("documents"), "documents")
        top_n = opt_int(body, "top_n", 0) or 0
        self._model(body, "Rerank (Score) API")
        pairs = [(q, d) for d in docs]
        self._check_len(pairs)
        maybe_fail(self.st)
        scores, n_tokens = self._scores(pairs)
        await self._hold_slot(n_tokens, len(pairs))
        order = sorted(range(len(docs)), key=lambda i: -scores[i])
        if 0 < top_n < len(order):
            order = order[:top_n]
        conn.send(200, orjson.dumps({
            "id": "score-" + os.urandom(16).hex(), "model": self.st.cfg.model_name,  # vLLM 0.32: score- prefix too
            "usage": {"prompt_tokens": n_tokens, "total_tokens": n_tokens},
            "results": [{"index": i, "document": {"text": docs[i], "multi_modal": None},
                         "relevance_score": scores[i]} for i in order]}))

    async def score(self, req: Request, conn: Connection) -> None:
        body = load_body(req.body)
        if "queries" in body:  # newer request form
            left, right = _text_list(body.get("queries"), "queries"), _text_list(body.get("documents"), "documents")
        else:
            left, right = _text_list(body.get("text_1"), "text_1"), _text_list(body.get("text_2"), "text_2")
        self._model(body, "Score API")
        if len(left) == 1:
            pairs = [(left[0], r) for r in right]
        elif len(left) == len(right):
            pairs = list(zip(left, right, strict=True))
        else:
            raise ApiError(400, "Input lengths must be either 1:1, 1:N or N:N", "BadRequestError")
        self._check_len(pairs)
        maybe_fail(self.st)
        scores, n_tokens = self._scores(pairs)
        await self._hold_slot(n_tokens, len(pairs))
        conn.send(200, orjson.dumps({
            "id": "score-" + os.urandom(16).hex(), "object": "list", "created": int(time.time()),
            "model": self.st.cfg.model_name,
            "data": [{"index": i, "object": "score", "score": s} for i, s in enumerate(scores)],
            "usage": {"prompt_tokens": n_tokens, "total_tokens": n_tokens, "completion_tokens": 0,
                      "prompt_tokens_details": None}}))
