"""POST /tokenize and POST /detokenize, vLLM's shapes, on the sim's cl100k accounting.

vLLM (vllm/entrypoints/serve/tokenize/): tokenize takes `prompt` (completion form) or
`messages` (chat form, `add_generation_prompt` default true) and answers
`{"count", "max_model_len", "tokens", "token_strs"}` (`token_strs` only with
`return_token_strs`, else null); detokenize takes `tokens` and answers `{"prompt"}`.
`model` is optional; a wrong one is vLLM's 404. These paths are outside vLLM's /v1 auth
prefix, so `--api-key` does not guard them, and they never reach the engine (no metrics).

Counts agree with the rest of the sim by construction: a prompt tokenizes to
`tokens.count_text(prompt)` ids; messages render to exactly `tokens.count_chat_prompt(...)`
ids (3 fewer when add_generation_prompt is false): the same ChatML-like rendering the
prefix cache hashes (prefix_cache.render_chat), so a client can predict cache hits. Its
<|im_start|>/<|im_end|> ids are not cl100k tokens; /detokenize spells them out.
"""

from __future__ import annotations

from typing import Any

import orjson

from gateway import tokens
from gateway.sim.errors import bad_request
from gateway.sim.http import Connection, Request
from gateway.sim.prefix_cache import IM_END, IM_START, render_chat
from gateway.sim.protocol import ensure_served
from gateway.sim.state import SimState
from gateway.sim.validation import BodyError, load_body, opt_bool, opt_str

_SPECIAL_TEXT = {IM_START: "<|im_start|>", IM_END: "<|im_end|>"}  # not in cl100k; the sim's chat framing


def chat_ids(messages: list[dict[str, Any]], tools: list[Any] | None, add_generation_prompt: bool) -> list[int]:
    """The ids the prefix cache hashes for this chat prompt (prefix_cache.render_chat)."""
    ids = render_chat(messages, tools)
    return ids if add_generation_prompt else ids[:len(ids) - tokens.REPLY_PRIMING_TOKENS]


class TokenizeApi:
    def __init__(self, st: SimState) -> None:
        self.st = st

    def _check_model(self, body: dict[str, Any]) -> None:
        model = opt_str(body, "model")
        if model is not None:
            ensure_served(model, self.st.cfg)

    async def tokenize(self, req: Request, conn: Connection) -> None:
        body = load_body(req.body)
        if "messages" in body:
            messages = body["messages"]
            if not isinstance(messages, list) or not all(isinstance(m, dict) for m in messages):
                raise BodyError("messages", "list_type", "Input should be a valid list of messages")
            tools = body.get("tools")
            if tools is not None and not isinstance(tools, list):
                raise BodyError("tools", "list_type", "Input should be a valid list")
            ids = chat_ids(messages, tools or None, opt_bool(body, "add_generation_prompt", default=True))
        elif "prompt" in body:
            prompt = body["prompt"]
            if not isinstance(prompt, str):
                raise BodyError("prompt", "string_type", "Input should be a valid string")
            ids = tokens.encode(prompt)
        else:
            raise BodyError("prompt", "missing", "Field required")
        self._check_model(body)
        strs = [_decode([t]) for t in ids] if opt_bool(body, "return_token_strs") else None
        conn.send(200, orjson.dumps({"count": len(ids), "max_model_len": self.st.cfg.max_model_len,
                                     "tokens": ids, "token_strs": strs}))

    async def detokenize(self, req: Request, conn: Connection) -> None:
        body = load_body(req.body)
        ids = body.get("tokens")
        if ids is None:
            raise BodyError("tokens", "missing", "Field required")
        if not isinstance(ids, list) or not all(isinstance(t, int) and not isinstance(t, bool) for t in ids):
            raise BodyError("tokens", "list_type", "Input should be a valid list of integers")
        self._check_model(body)
        n_vocab = tokens.encoding().n_vocab
        bad = [t for t in ids if (t < 0 or t >= n_vocab) and t not in _SPECIAL_TEXT]
        if bad:
            raise bad_request(f"Token id {bad[0]} is out of vocabulary", "tokens")
        try:
            text = _decode(ids)
        except (KeyError, ValueError):
            raise bad_request("tokens contain ids that cannot be decoded", "tokens") from None
        conn.send(200, orjson.dumps({"prompt": text}))


def _decode(ids: list[int]) -> str:
    """cl100k decode, with the chat framing ids spelled out as vLLM prints special tokens."""
    out: list[str] = []
    run: list[int] = []
    for t in ids:
        if t in _SPECIAL_TEXT:
            out += [tokens.decode(run), _SPECIAL_TEXT[t]]
            run = []
        else:
            run.append(t)
    out.append(tokens.decode(run))
    return "".join(out)
