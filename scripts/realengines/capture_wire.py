"""Capture what a running real engine sends on the wire, as a short text file.

    python scripts/realengines/capture_wire.py --url http://127.0.0.1:PORT --model NAME \
        --kind chat|embedding [--api-key KEY] --out docs/realengines/vllm-chat.txt

Each case is the request, the status, the headers that matter and the raw body (streams
event by event). The simulator is diffed against these files; rerun this script against
a new engine version to refresh them.
"""

from __future__ import annotations

import argparse
import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

WEATHER_TOOL = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Current weather in a city",
        "parameters": {
            "type": "object",
            "properties": {"city": {"type": "string"}},
            "required": ["city"],
        },
    },
}
HEADERS_KEPT = ("content-type", "cache-control", "x-request-id", "content-encoding", "transfer-encoding")
MAX_BODY = 4000


@dataclass
class Case:
    name: str
    method: str
    path: str
    body: Any = None
    raw: bytes | None = None  # sent verbatim instead of `body` (malformed JSON)
    headers: dict[str, str] = field(default_factory=dict)


def chat(model: str, **extra: Any) -> dict[str, Any]:
    return {"model": model, "messages": [{"role": "user", "content": "What is the weather in Paris?"}], **extra}


def completion(model: str, **extra: Any) -> dict[str, Any]:
    return {"model": model, "prompt": "Hello there", **extra}


def chat_cases(m: str) -> list[Case]:
    long_prompt = "hello " * 3000
    return [
        Case("health", "GET", "/health"),
        Case("models", "GET", "/v1/models"),
        Case("chat", "POST", "/v1/chat/completions", chat(m, max_tokens=16)),
        Case("chat stream", "POST", "/v1/chat/completions", chat(m, max_tokens=16, stream=True)),
        Case("chat stream include_usage", "POST", "/v1/chat/completions",
             chat(m, max_tokens=16, stream=True, stream_options={"include_usage": True})),
        Case("chat stream continuous_usage_stats", "POST", "/v1/chat/completions",
             chat(m, max_tokens=16, stream=True,
                  stream_options={"include_usage": True, "continuous_usage_stats": True})),
        Case("chat n=2", "POST", "/v1/chat/completions", chat(m, max_tokens=16, n=2)),
        Case("chat n=2 stream", "POST", "/v1/chat/completions", chat(m, max_tokens=16, n=2, stream=True)),
        Case("chat length", "POST", "/v1/chat/completions", chat(m, max_tokens=3)),
        Case("chat tools", "POST", "/v1/chat/completions", chat(m, max_tokens=16, tools=[WEATHER_TOOL])),
        Case("chat tools stream", "POST", "/v1/chat/completions",
             chat(m, max_tokens=16, tools=[WEATHER_TOOL], stream=True,
                  stream_options={"include_usage": True})),
        Case("completion", "POST", "/v1/completions", completion(m, max_tokens=6)),
        Case("completion stream", "POST", "/v1/completions", completion(m, max_tokens=6, stream=True)),
        Case("completion stream include_usage", "POST", "/v1/completions",
             completion(m, max_tokens=6, stream=True, stream_options={"include_usage": True})),
        Case("completion stream continuous_usage_stats", "POST", "/v1/completions",
             completion(m, max_tokens=4, stream=True,
                        stream_options={"include_usage": True, "continuous_usage_stats": True})),
        Case("completion n=2", "POST", "/v1/completions", completion(m, max_tokens=3, n=2)),
        Case("completion prompt cached (same prompt again)", "POST", "/v1/completions",
             completion(m, max_tokens=2)),
        Case("error unknown model", "POST", "/v1/chat/completions", chat("no-such-model", max_tokens=4)),
        Case("error malformed JSON", "POST", "/v1/chat/completions", raw=b'{"model": "x", "messages": ['),
        Case("error wrong type max_tokens", "POST", "/v1/chat/completions", chat(m, max_tokens="many")),
        Case("error wrong type messages", "POST", "/v1/chat/completions", {"model": m, "messages": "hi"}),
        Case("error unknown role", "POST", "/v1/chat/completions",
             {"model": m, "messages": [{"role": "wizard", "content": "hi"}], "max_tokens": 4}),
        Case("error max_tokens over context", "POST", "/v1/chat/completions", chat(m, max_tokens=100000)),
        Case("error over-long prompt", "POST", "/v1/completions", completion(m, prompt=long_prompt, max_tokens=4)),
        Case("error over-long prompt stream", "POST", "/v1/completions",
             completion(m, prompt=long_prompt, max_tokens=4, stream=True)),
        Case("error unknown route", "POST", "/v1/nothing", {"model": m}),
        Case("error embeddings on a chat server", "POST", "/v1/embeddings", {"model": m, "input": "hi"}),
        Case("error wrong api key", "POST", "/v1/chat/completions", chat(m, max_tokens=4),
             headers={"Authorization": "Bearer wrong-key"}),
    ]


def embedding_cases(m: str) -> list[Case]:
    return [
        Case("models", "GET", "/v1/models"),
        Case("embeddings float", "POST", "/v1/embeddings",
             {"model": m, "input": ["hello world", "the weather in Paris"], "encoding_format": "float"}),
        Case("embeddings base64", "POST", "/v1/embeddings",
             {"model": m, "input": "hello world", "encoding_format": "base64"}),
        Case("embeddings token ids", "POST", "/v1/embeddings", {"model": m, "input": [[10, 11, 12]]}),
        Case("error embeddings wrong type", "POST", "/v1/embeddings", {"model": m, "input": 5}),
        Case("error chat on an embedding server", "POST", "/v1/chat/completions", chat(m, max_tokens=4)),
    ]


def shorten(text: str) -> str:
    # Embedding vectors are long; their shape is what matters here.
    text = re.sub(r"(\[-?\d[^\[\]]{200})[^\[\]]*\]", r"\1 ...]", text)
    return text if len(text) <= MAX_BODY else text[:MAX_BODY] + f"\n... ({len(text)} chars)"


def run(client: httpx.Client, case: Case, key: str | None) -> str:
    headers = {"Content-Type": "application/json"}
    if key:
        headers["Authorization"] = f"Bearer {key}"
    headers.update(case.headers)
    content = case.raw if case.raw is not None else (None if case.body is None else json.dumps(case.body).encode())
    shown = (case.raw or b"").decode() if case.raw is not None else json.dumps(case.body)
    shown = re.sub(r"(hello ){20,}", '<"hello " x 3000>', shown)
    out = [f"### {case.name}", f"> {case.method} {case.path} {shown if case.body is not None or case.raw else ''}".rstrip()]
    if "Authorization" in case.headers:
        out.append(f"> Authorization: {case.headers['Authorization']}")
    with client.stream(case.method, case.path, content=content, headers=headers) as r:
        body = r.read().decode(errors="replace")
        out.append(f"< {r.status_code}")
        for h in HEADERS_KEPT:
            if h in r.headers:
                out.append(f"< {h}: {r.headers[h]}")
    out.append(shorten(body.strip()) if body.strip() else "(empty body)")
    return "\n".join(out) + "\n"


def metric_names(client: httpx.Client, key: str | None) -> str:
    # llama-server guards /metrics with its --api-key too (vLLM does not).
    text = client.get("/metrics", headers={"Authorization": f"Bearer {key}"} if key else {}).text
    names = sorted({line.split("{")[0].split(" ")[0] for line in text.splitlines() if line and not line.startswith("#")})
    prefix = {n.split(":")[0] for n in names if ":" in n}
    keep = [n for n in names if ":" in n and not n.endswith(("_created",))]
    return f"### /metrics names (prefixes {sorted(prefix)})\n" + "\n".join(keep) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    ap.add_argument("--url", required=True)
    ap.add_argument("--model", required=True)
    ap.add_argument("--kind", choices=["chat", "embedding"], default="chat")
    ap.add_argument("--api-key", default=None)
    ap.add_argument("--title", default="")
    ap.add_argument("--out", type=Path, required=True)
    args = ap.parse_args()
    cases = chat_cases(args.model) if args.kind == "chat" else embedding_cases(args.model)
    parts = [f"# {args.title or args.url}: raw wire samples (scripts/realengines/capture_wire.py)\n"]
    with httpx.Client(base_url=args.url, timeout=60) as client:
        for case in cases:
            if case.name == "error wrong api key" and not args.api_key:
                continue
            parts.append(run(client, case, args.api_key))
        parts.append(metric_names(client, args.api_key))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text("\n".join(parts))


if __name__ == "__main__":
    main()
