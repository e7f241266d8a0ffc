"""POST /v1/audio/transcriptions for a sim started with `--transcription` (a Whisper-like model).

Mirrors vLLM's speech-to-text server (vllm/entrypoints/openai/speech_to_text/, protocol.py):
- request: multipart/form-data with a `file` part (a plain string field is 422 "Expected
  'file' to be a file-like object, not 'str'."), `model` (optional), `language`, `prompt`,
  `response_format` (json | text | verbose_json; others 400), `stream`, `stream_include_usage`.
  Files over 25 MB (VLLM_MAX_AUDIO_CLIP_FILESIZE_MB) -> 400 "Maximum file size exceeded".
  A body that is not valid multipart -> 400 "There was an error parsing the body" (FastAPI).
- json: `{"text": T, "usage": {"type": "duration", "seconds": ceil(audio seconds)}}`; text:
  the bare text as text/plain; verbose_json: `{"duration", "language", "text", "segments", "words"}`.
- stream: chunks `data: {"id": "transcribe-...", "object": "transcription.chunk", "created", "model",
  "choices": [{"delta": {"content": piece}}]}` (exclude_unset: finish_reason/stop_reason appear
  only on the last token's choice), with `stream_include_usage` a final `"choices": []` chunk
  with `usage {prompt_tokens, completion_tokens, total_tokens}`, then `data: [DONE]`.
- a sim that is not a transcription model answers 501 NotImplementedError "The model does not
  support Transcriptions API" (vLLM 0.32's routers raise NotImplementedError).

Output is deterministic per audio bytes (blake2b of the file); ~2.5 words per second of
audio, each word one cl100k token, so generation tokens = words. Duration comes from a WAV
header when the file is RIFF/WAVE, else bytes / 32000 (16 kHz 16-bit mono). Prompt tokens
are Whisper's 4 decoder start tokens plus the `prompt` field's tokens.
"""

from __future__ import annotations

import math
import os
import struct
import time
from contextlib import aclosing
from typing import Any

import orjson

from gateway import tokens
from gateway.sim import textgen
from gateway.sim.errors import ApiError, bad_request, not_supported
from gateway.sim.http import Connection, Request
from gateway.sim.multipart import MultipartError, Part, boundary_of, parse
from gateway.sim.protocol import GenRequest, Prompt, ensure_served
from gateway.sim.state import SimState
from gateway.sim.steps import Flush, Run, maybe_fail
from gateway.sim.textgen import ChoicePlan
from gateway.sim.validation import BodyError

MAX_AUDIO_BYTES = 25 * 1024 * 1024
# Whisper's <|startoftranscript|><|lang|><|transcribe|><|notimestamps|>, as 4 cl100k special ids
DECODER_START_IDS = (100257, 100258, 100259, 100260)
WORDS_PER_SECOND = 2.5
_FORMATS = ("json", "text", "verbose_json")


def audio_seconds(data: bytes) -> float:
    """Duration from a RIFF/WAVE header (byte rate and data size), else 16 kHz 16-bit mono."""
    if len(data) >= 12 and data[:4] == b"RIFF" and data[8:12] == b"WAVE":
        pos, byte_rate, data_len = 12, 0, None
        while pos + 8 <= len(data):
            cid, size = data[pos:pos + 4], struct.unpack("<I", data[pos + 4:pos + 8])[0]
            if cid == b"fmt " and size >= 16 and pos + 16 <= len(data):
                byte_rate = struct.unpack("<I", data[pos + 16:pos + 20])[0]
            elif cid == b"data":
                data_len = min(size, len(data) - pos - 8)
                break
            pos += 8 + size + (size & 1)
        if byte_rate > 0 and data_len is not None:
            return data_len / byte_rate
    return len(data) / 32000.0


def _bool_field(fields: dict[str, str], name: str) -> bool:
    v = fields.get(name, "false").strip().lower()
    if v in ("true", "1"):
        return True
    if v in ("false", "0", ""):
        return False
    raise BodyError(name, "bool_parsing", "Input should be a valid boolean, unable to interpret input")


class AudioApi:
    def __init__(self, st: SimState) -> None:
        self.st = st

    async def transcriptions(self, req: Request, conn: Connection) -> None:
        cfg = self.st.cfg
        try:
            boundary = boundary_of(req.headers.get("content-type"))
        except MultipartError:
            raise BodyError("file", "missing", "Field required") from None  # no form at all: FastAPI's 400
        try:
            parts = parse(req.body, boundary)
        except MultipartError:
            raise ApiError(400, "There was an error parsing the body", "Bad Request") from None
        files: dict[str, Part] = {}
        fields: dict[str, str] = {}
        for p in parts:
            if p.filename is not None:
                files[p.name] = p
            else:
                fields[p.name] = p.data.decode("utf-8", "replace")
        if "file" not in files:
            if "file" in fields:
                raise ApiError(422, "Expected 'file' to be a file-like object, not 'str'.", "Unprocessable Entity")
            raise BodyError("file", "missing", "Field required")
        fmt = fields.get("response_format", "json")
        if fmt in ("srt", "vtt"):
            raise bad_request("Currently only support response_format `text`, `json` or `verbose_json`",
                              "response_format")
        if fmt not in _FORMATS:
            raise BodyError("response_format", "literal_error",
                            "Input should be 'json', 'text', 'srt', 'verbose_json' or 'vtt'")
        stream = _bool_field(fields, "stream")
        include_usage = _bool_field(fields, "stream_include_usage")
        if include_usage and not stream:
            raise BodyError("", "value_error", "Value error, Stream options can only be defined when `stream=True`.",
                            param="stream_include_usage")
        if not cfg.transcription:
            raise not_supported("Transcriptions API")
        ensure_served(fields.get("model") or cfg.model_name, cfg)
        audio = files["file"].data
        if len(audio) > MAX_AUDIO_BYTES:
            raise bad_request("Maximum file size exceeded", "audio_filesize_mb")
        maybe_fail(self.st)
        seconds = audio_seconds(audio)
        key = textgen.stable_hash(cfg.seed, "audio", audio)
        n_words = max(1, round(seconds * WORDS_PER_SECOND))
        plan = ChoicePlan(deltas=[("content", w, 1) for w in textgen.words(key, n_words)], completion_tokens=n_words)
        ids = [*DECODER_START_IDS, *tokens.encode(fields.get("prompt", ""))]
        greq = GenRequest(kind="chat", model=cfg.model_name, stream=stream,
                          prompts=[Prompt(key=b"t" + orjson.dumps(ids), tokens=len(ids), ids=ids)])
        run = Run(self.st, greq, req, conn, plan=plan)
        if stream:
            await _stream(run, cfg.model_name, include_usage, conn)
            return
        await run.unary()
        text = run.plan.text("content") or ""
        if fmt == "text":
            conn.send(200, text.encode(), content_type=b"text/plain; charset=utf-8")
            return
        if fmt == "verbose_json":
            body: dict[str, Any] = {
                "duration": f"{seconds:.2f}", "language": fields.get("language") or "en", "text": text,
                "segments": [{"id": 0, "seek": 0, "start": 0.0, "end": round(seconds, 2), "text": text,
                              "tokens": tokens.encode(text), "temperature": 0.0, "avg_logprob": None,
                              "compression_ratio": None, "no_speech_prob": None}], "words": None}
        else:
            body = {"text": text, "usage": {"type": "duration", "seconds": math.ceil(seconds)}}
        conn.send(200, orjson.dumps(body))


async def _stream(run: Run, model: str, include_usage: bool, conn: Connection) -> None:
    conn.start_stream()
    flush = Flush(conn)
    plan = run.plan
    # vLLM 0.32 names the stream f"{task_type}-{request id}", task_type "transcribe"
    head = {"id": "transcribe-" + os.urandom(16).hex(), "object": "transcription.chunk", "created": int(time.time()),
            "model": model}
    last = plan.steps - 1
    async with aclosing(run.steps(flush)) as steps:
        async for step in steps:
            choice: dict[str, Any] = {"delta": {"content": plan.deltas[step][1]}}
            if step == last:
                choice.update(finish_reason=plan.finish_reason, stop_reason=plan.stop_reason)
            flush.add(b"data: " + orjson.dumps({**head, "choices": [choice]}) + b"\n\n")
    plan = run.plan  # cut short if the engine aborted the request
    if include_usage:
        n = plan.completion_tokens
        flush.add(b"data: " + orjson.dumps({**head, "choices": [], "usage": {
            "prompt_tokens": run.prompt_tokens, "completion_tokens": n,
            "total_tokens": run.prompt_tokens + n}}) + b"\n\n")
    flush.add(b"data: [DONE]\n\n")
    flush.write()
    conn.end_stream()
