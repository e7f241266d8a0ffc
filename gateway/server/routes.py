"""The inference route table: one typed entry per route, read by the app and the pipeline.

A new route is one `Route` here (plus its answer rewrites in proxy/plan.py when it needs
any), not a new branch in the dispatcher: the app looks the path up, the pipeline reads
which pools may serve it, where to send it, how its body is framed, where its usage is,
how its streams end and how to shape its errors.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

from ..config import PoolKind
from ..errors import GatewayError, anthropic_body
from ..proxy import dialects, usage
from ..proxy.dialects import StreamDialect
from ..proxy.usage import UsageExtractor

# How a route's own errors (auth, validation, limits, upstream) are shaped for the client.
ErrorDialect = Literal["openai", "anthropic"]

# Error body encoders by dialect; a dialect is one entry here and one value of ErrorDialect.
ERROR_BODIES: dict[str, Callable[[GatewayError], bytes]] = {"openai": GatewayError.body, "anthropic": anthropic_body}

# How the request body is framed: JSON, or a multipart/form-data upload whose `model`
# (and `stream`) are form fields.
BodyFormat = Literal["json", "multipart"]


@dataclass(frozen=True, slots=True)
class Route:
    path: str  # the path clients call, e.g. "/v1/chat/completions"
    endpoint: str  # its name in metrics, the usage ledger and proxy/plan.py
    # Appended to the backend's base URL (which ends in /v1), or, with `upstream_root`,
    # to the engine's root URL (vLLM serves /tokenize, /rerank, /score outside /v1).
    upstream_path: str
    kinds: frozenset[PoolKind]  # pool kinds that serve it; others get a 400 naming the right route
    streams: bool = True  # whether `"stream": true` is honoured
    errors: ErrorDialect = "openai"
    method: str = "POST"
    upstream_root: bool = False
    body: BodyFormat = "json"
    usage: UsageExtractor = usage.OPENAI
    stream: StreamDialect = dialects.OPENAI
    # Also take the client's key from Anthropic's `x-api-key` header (SDKs send it).
    x_api_key: bool = False
    # A path with `{id}`: names a stored object, not a model (`proxy/lookup.py` serves it).
    by_id: bool = False
    # The engine stores its answers (Responses): record which backend made each id, and pin
    # `previous_response_id` follow-ups and by-id requests to it (`proxy/stored.py`).
    stores: bool = False


def _routes(*routes: Route) -> dict[str, Route]:
    return {r.path: r for r in routes}


CHAT = frozenset[PoolKind]({"chat"})
EMBEDDING = frozenset[PoolKind]({"embedding"})
# vLLM answers rerank/score with a cross-encoder (`--convert classify`) or, by cosine,
# with an embedding model; both kinds may serve them.
RERANK = frozenset[PoolKind]({"rerank", "embedding"})
TOKENIZER = frozenset[PoolKind]({"chat", "embedding", "rerank"})
TRANSCRIPTION = frozenset[PoolKind]({"transcription"})


ROUTES: dict[str, Route] = _routes(
    Route("/v1/chat/completions", "chat", "/chat/completions", CHAT),
    Route("/v1/completions", "completions", "/completions", CHAT),
    Route("/v1/embeddings", "embeddings", "/embeddings", EMBEDDING, streams=False),
    Route("/v1/responses", "responses", "/responses", CHAT, usage=usage.RESPONSES, stream=dialects.RESPONSES,
          stores=True),
    Route("/v1/messages", "messages", "/messages", CHAT, usage=usage.MESSAGES, stream=dialects.MESSAGES,
          errors="anthropic", x_api_key=True),
    Route("/v1/messages/count_tokens", "count_tokens", "/messages/count_tokens", CHAT, streams=False,
          usage=usage.NO_TOKENS, errors="anthropic", x_api_key=True),
    Route("/v1/rerank", "rerank", "/rerank", RERANK, streams=False, usage=usage.POOLING),
    Route("/rerank", "rerank", "/rerank", RERANK, streams=False, usage=usage.POOLING, upstream_root=True),
    Route("/v2/rerank", "rerank", "/v2/rerank", RERANK, streams=False, usage=usage.POOLING, upstream_root=True),
    Route("/v1/score", "score", "/score", RERANK, streams=False, usage=usage.POOLING),
    Route("/score", "score", "/score", RERANK, streams=False, usage=usage.POOLING, upstream_root=True),
    Route("/tokenize", "tokenize", "/tokenize", TOKENIZER, streams=False, usage=usage.NO_TOKENS,
          upstream_root=True),
    Route("/detokenize", "detokenize", "/detokenize", TOKENIZER, streams=False, usage=usage.NO_TOKENS,
          upstream_root=True),
    Route("/v1/audio/transcriptions", "transcriptions", "/audio/transcriptions", TRANSCRIPTION,
          body="multipart", usage=usage.TRANSCRIPTION, stream=dialects.OPENAI_NO_INJECT),
)  # fmt: skip


# Routes whose path holds an id: matched by prefix and suffix, after the exact table.
ID_ROUTES: tuple[Route, ...] = (
    Route("/v1/responses/{id}/cancel", "responses_cancel", "/responses", CHAT, streams=False,
          usage=usage.NO_TOKENS, by_id=True, stores=True),
    Route("/v1/responses/{id}", "responses_retrieve", "/responses", CHAT, streams=False, method="GET",
          usage=usage.NO_TOKENS, by_id=True, stores=True),
)  # fmt: skip


def find_route(path: str) -> Route | None:
    """The route serving `path`: an exact entry, else an id route whose shape it has."""
    route = ROUTES.get(path)
    if route is not None:
        return route
    for r in ID_ROUTES:
        prefix, _, suffix = r.path.partition("{id}")
        if path.startswith(prefix) and path.endswith(suffix) and len(path) > len(prefix) + len(suffix):
            if "/" not in path[len(prefix) : len(path) - len(suffix)]:
                return r
    return None


def paths_for(kind: PoolKind) -> list[str]:
    """The /v1 routes a pool of this kind serves, in table order (for error messages; the
    root spellings and /tokenize would only make the message longer)."""
    return [r.path for r in ROUTES.values() if kind in r.kinds and r.path.startswith("/v1/")]
