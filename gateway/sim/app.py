"""Routing and the non-generation endpoints: health, models, metrics, embeddings, /sim/*.

Gates on /v1/* mirror vLLM's order: (still loading -> 503), API key -> 401, then the
endpoint. Test hooks (`x-sim-force-status`, error_rate) answer in vLLM's error shape.
"""

from __future__ import annotations

import asyncio
import base64
import os
import struct
import time
from collections.abc import Awaitable, Callable
from typing import Any

import orjson

from gateway.sim import textgen
from gateway.sim.anthropic import MessagesApi
from gateway.sim.audio import AudioApi
from gateway.sim.config import SimConfig
from gateway.sim.dev_routes import dev_routes
from gateway.sim.errors import ApiError, RouteNotMounted, engine_dead, error_body, not_supported
from gateway.sim.generate import Generation
from gateway.sim.http import Connection, Request
from gateway.sim.pooling import PoolingApi
from gateway.sim.protocol import parse_chat, parse_completion, parse_embedding
from gateway.sim.responses import ResponsesApi
from gateway.sim.state import SimState
from gateway.sim.tokenize import TokenizeApi

Endpoint = Callable[[Request, Connection], Awaitable[None]]
_DEV_PATHS = frozenset(("/sleep", "/wake_up", "/is_sleeping", "/reset_prefix_cache"))

# vLLM's AuthenticationMiddleware guards these prefixes only (GUARDED_PREFIX; /inference and
# /cohere are not simulated): /rerank, /score, /tokenize, /detokenize stay open with --api-key.
GUARDED = ("/v1/", "/v2/")
OPEN_API = frozenset({"/rerank", "/score", "/tokenize", "/detokenize"})


class SimApp:
    def __init__(self, cfg: SimConfig) -> None:
        self.cfg = cfg
        self.st = SimState.create(cfg)
        self.responses = ResponsesApi(self.st)
        messages = MessagesApi(self.st)
        pooling = PoolingApi(self.st)
        tok = TokenizeApi(self.st)
        audio = AudioApi(self.st)

        def inference(run: Endpoint) -> Endpoint:
            async def endpoint(req: Request, conn: Connection) -> None:
                await self._inference(req, conn, run)
            return endpoint

        def plain(run: Endpoint) -> Endpoint:
            async def endpoint(req: Request, conn: Connection) -> None:
                try:
                    await run(req, conn)
                except ApiError as exc:
                    conn.send(exc.status, exc.body())
            return endpoint

        rerank, score = inference(pooling.rerank), inference(pooling.score)
        self.routes: dict[str, dict[str, Endpoint]] = {
            "/health": {"GET": self.health},
            "/ping": {"GET": self.health, "POST": self.health},
            "/version": {"GET": self.version},
            "/metrics": {"GET": self.metrics},
            "/v1/models": {"GET": self.models},
            "/v1/chat/completions": {"POST": self.chat},
            "/v1/completions": {"POST": self.completions},
            "/v1/embeddings": {"POST": self.embeddings},
            "/v1/responses": {"POST": inference(self.responses.create)},
            "/v1/messages": {"POST": inference(messages.create)},
            "/v1/messages/count_tokens": {"POST": messages.count_tokens},
            "/rerank": {"POST": rerank}, "/v1/rerank": {"POST": rerank}, "/v2/rerank": {"POST": rerank},
            "/score": {"POST": score}, "/v1/score": {"POST": score},
            "/tokenize": {"POST": plain(tok.tokenize)}, "/detokenize": {"POST": plain(tok.detokenize)},
            "/v1/audio/transcriptions": {"POST": inference(audio.transcriptions)},
            "/sim/faults": {"GET": self.get_faults, "POST": self.set_faults},
            "/sim/state": {"GET": self.state},
        }
        if cfg.sleep.dev_mode:
            self.routes.update(dev_routes(self.st))

    async def handle(self, req: Request, conn: Connection) -> None:
        methods = self.routes.get(req.path) or self.responses.route(req.path)
        if methods is None:
            conn.send(404, b'{"detail":"Not Found"}')
            return
        endpoint = methods.get(req.method)
        if endpoint is None:
            conn.send(405, b'{"detail":"Method Not Allowed"}',
                      headers=[(b"allow", ", ".join(methods).encode())])
            return
        if req.path in _DEV_PATHS and not self.st.is_ready():  # vLLM's server is not up yet; no auth on them
            conn.send(503, error_body(503, "The model is still loading; retry later."))
            return
        if req.path.startswith(GUARDED) or req.path in OPEN_API:
            gate = self._gate(req, guarded=req.path.startswith(GUARDED))
            if gate is not None:
                conn.send(gate[0], gate[1])
                return
        await endpoint(req, conn)

    def _gate(self, req: Request, guarded: bool = True) -> tuple[int, bytes] | None:
        if not self.st.is_ready():
            return 503, error_body(503, "The model is still loading; retry later.")
        key = self.cfg.api_key
        if guarded and key is not None and req.headers.get("authorization") != "Bearer " + key and not (
                self.cfg.accept_x_api_key and req.headers.get("x-api-key") == key):
            return 401, b'{"error":"Unauthorized"}'  # vLLM's auth middleware answers exactly this
        forced = req.headers.get("x-sim-force-status")
        if forced is not None and forced.isdigit() and 400 <= int(forced) <= 599:
            status = int(forced)
            return status, error_body(status, f"Simulated error (x-sim-force-status: {status})")
        return None

    # ---- plain endpoints ----------------------------------------------------------
    async def health(self, req: Request, conn: Connection) -> None:
        conn.send(200 if self.st.is_ready() else 503, b"", content_type=b"text/plain; charset=utf-8")

    async def version(self, req: Request, conn: Connection) -> None:
        conn.send(200, b'{"version":"0.16.0+sim"}')

    async def metrics(self, req: Request, conn: Connection) -> None:
        conn.send(200, self.st.metrics.render(), content_type=b"text/plain; version=0.0.4; charset=utf-8")

    async def models(self, req: Request, conn: Connection) -> None:
        cfg = self.cfg
        created = int(time.time())
        cards = [{"id": name, "object": "model", "created": created, "owned_by": "vllm", "root": cfg.model,
                  "parent": None, "max_model_len": cfg.max_model_len, "permission": []}
                 for name in cfg.served_model_names]
        conn.send(200, orjson.dumps({"object": "list", "data": cards}))

    async def get_faults(self, req: Request, conn: Connection) -> None:
        conn.send(200, orjson.dumps(self.cfg.faults.to_json()))

    async def set_faults(self, req: Request, conn: Connection) -> None:
        try:
            patch = orjson.loads(req.body or b"{}")
            self.cfg.faults.update(patch)
        except (orjson.JSONDecodeError, ValueError) as exc:
            conn.send(400, error_body(400, str(exc)))
            return
        conn.send(200, orjson.dumps(self.cfg.faults.to_json()))

    async def state(self, req: Request, conn: Connection) -> None:
        st, c = self.st, self.st.counters
        body = {
            "running": st.sched.running, "waiting": st.sched.waiting, "max_num_seqs": st.sched.max_num_seqs,
            "served": self.cfg.served_model_names, "model": self.cfg.model_name, "ready": st.is_ready(),
            "pid": os.getpid(), "uptime_s": round(time.time() - st.started_wall, 3),
            "ready_after_s": st.ready_after_s(),
            "requests_total": c.requests_total, "requests_finished": c.requests_finished,
            "requests_succeeded": c.requests_succeeded, "requests_aborted": c.requests_aborted,
            "requests_failed": c.requests_failed, "prompt_tokens": st.metrics.prompt_tokens,
            "generation_tokens": st.metrics.generation_tokens, "faults": self.cfg.faults.to_json(),
            "kv_cache": st.kv.snapshot(), "sleep": st.engine.snapshot(),
        }
        if st.engine.ledger is not None:
            body["devices"] = await asyncio.to_thread(st.engine.ledger.snapshot)
        conn.send(200, orjson.dumps(body))

    # ---- inference --------------------------------------------------------------------
    async def _inference(self, req: Request, conn: Connection, run: Endpoint) -> None:
        """Counters, error rendering and the crash_after_requests fault around one request."""
        c = self.st.counters
        c.requests_total += 1
        try:
            await run(req, conn)
        except ApiError as exc:
            c.requests_failed += 1
            conn.send(exc.status, exc.body())
        except (asyncio.CancelledError, ConnectionError):
            c.requests_aborted += 1  # the client went away
            raise
        else:
            c.requests_succeeded += 1
        finally:
            self.st.request_finished(conn)

    def _maybe_fail(self) -> None:
        faults = self.cfg.faults
        if faults.engine_dead:
            raise engine_dead()
        if faults.error_rate > 0.0 and self.st.rng.random() < faults.error_rate:
            raise ApiError(faults.error_status, f"Simulated engine failure (fault error_rate={faults.error_rate})")

    async def chat(self, req: Request, conn: Connection) -> None:
        await self._inference(req, conn, self._chat)

    async def completions(self, req: Request, conn: Connection) -> None:
        await self._inference(req, conn, self._completions)

    async def embeddings(self, req: Request, conn: Connection) -> None:
        await self._inference(req, conn, self._embeddings)

    async def _chat(self, req: Request, conn: Connection) -> None:
        if self.cfg.embedding:
            raise RouteNotMounted()
        if self.cfg.is_pooling:
            raise not_supported("Chat Completions API")
        await self._generate(parse_chat(req.body, self.cfg), req, conn)

    async def _completions(self, req: Request, conn: Connection) -> None:
        if self.cfg.embedding:
            raise RouteNotMounted()
        if self.cfg.is_pooling:
            raise not_supported("Completions API")
        await self._generate(parse_completion(req.body, self.cfg), req, conn)

    async def _generate(self, greq: Any, req: Request, conn: Connection) -> None:
        self._maybe_fail()
        gen = Generation(self.st, greq, req, conn)
        if greq.stream:
            await gen.run_stream()
        else:
            await gen.run_unary()

    async def _embeddings(self, req: Request, conn: Connection) -> None:
        cfg, st = self.cfg, self.st
        if not cfg.embedding:
            if not cfg.is_pooling:
                raise RouteNotMounted()  # a generative model: vLLM 0.32 does not mount the route
            raise not_supported("Embeddings API")
        ereq = parse_embedding(req.body, cfg)
        self._maybe_fail()
        loop = asyncio.get_running_loop()
        t_arrive = loop.time()
        prompt_tokens = sum(p.tokens for p in ereq.inputs)
        acquired = False
        try:
            await st.sched.acquire()
            acquired = True
            delay = st.sched.jittered((cfg.ttft_ms + cfg.prefill_ms_per_token * prompt_tokens) / 1000.0)
            if delay > 0.0:
                await asyncio.sleep(delay)
        except asyncio.CancelledError:
            st.metrics.finished(["abort"] * len(ereq.inputs), loop.time() - t_arrive)
            raise
        finally:
            if acquired:
                st.sched.release()
        dim = ereq.dimensions or cfg.embedding_dim
        data = []
        for i, p in enumerate(ereq.inputs):
            vec = textgen.embedding(textgen.stable_hash(cfg.seed, "embed", p.key), cfg.embedding_dim)
            if dim < cfg.embedding_dim:
                vec = textgen.normalise(vec[:dim])  # matryoshka-style truncation
            packed = struct.pack(f"<{dim}f", *vec)
            out: Any = (base64.b64encode(packed).decode() if ereq.encoding_format == "base64"
                        else list(struct.unpack(f"<{dim}f", packed)))  # float32 values, like the engine's
            data.append({"index": i, "object": "embedding", "embedding": out})
        st.metrics.prompt_tokens += prompt_tokens
        st.metrics.finished(["stop"] * len(ereq.inputs), loop.time() - t_arrive)
        conn.send(200, orjson.dumps({
            "id": "embd-" + os.urandom(16).hex(), "object": "list", "created": int(time.time()),
            "model": cfg.model_name, "data": data,
            "usage": {"prompt_tokens": prompt_tokens, "total_tokens": prompt_tokens, "completion_tokens": 0,
                      "prompt_tokens_details": None}}))
