"""/v1/audio/transcriptions and the multipart parser behind it."""

from __future__ import annotations

import json
import math
import os
import struct
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from openai import OpenAI

from gateway import tokens
from gateway.sim.multipart import MultipartError, boundary_of, parse
from gateway.sim.testing import SimProcess


def wav(seconds: float, rate: int = 16000, seed: int = 0) -> bytes:
    """A 16-bit mono PCM WAV file of `seconds` of deterministic noise."""
    n = int(seconds * rate)
    data = (bytes(range(256)) * (2 * n // 256 + 1))[: 2 * n] if seed == 0 else os.urandom(2 * n)
    fmt = struct.pack("<HHIIHH", 1, 1, rate, rate * 2, 2, 16)
    return (b"RIFF" + struct.pack("<I", 36 + len(data)) + b"WAVE" + b"fmt " + struct.pack("<I", 16) + fmt
            + b"data" + struct.pack("<I", len(data)) + data)


# ---- parser unit tests ---------------------------------------------------------------

def test_parse_parts_quoted_boundary_preamble_and_epilogue() -> None:
    b = boundary_of('multipart/form-data; boundary="a b:c"')
    assert b == b"a b:c"
    body = (b"preamble\r\n--a b:c\r\nContent-Disposition: form-data; name=\"model\"\r\n\r\nm\r\n"
            b"--a b:c\r\nContent-Disposition: form-data; name=\"file\"; filename=\"x;y.wav\"\r\n"
            b"Content-Type: audio/wav\r\n\r\n\r\n--a b:c-not-a-delimiter\r\n\r\n--a b:c--\r\nepilogue")
    model, f = parse(body, b)
    assert (model.name, model.filename, model.data) == ("model", None, b"m")
    assert (f.name, f.filename, f.content_type) == ("file", "x;y.wav", "audio/wav")
    assert f.data == b"\r\n--a b:c-not-a-delimiter\r\n"  # a boundary prefix inside data is data


@pytest.mark.parametrize("ctype", [None, "application/json", "multipart/form-data", "multipart/form-data; boundary=",
                                   "multipart/form-data; boundary=" + "x" * 71])
def test_bad_content_types(ctype: str | None) -> None:
    with pytest.raises(MultipartError):
        boundary_of(ctype)


@pytest.mark.parametrize("body", [
    b"",
    b"--B\r\nContent-Disposition: form-data; name=\"a\"\r\n\r\nno closing boundary",
    b"--B\r\nContent-Disposition: form-data; name=\"a\"\r\nno blank line",
    b"--B\r\nContent-Type: text/plain\r\n\r\nx\r\n--B--",
    b"--B\r\nContent-Disposition: attachment; name=\"a\"\r\n\r\nx\r\n--B--",
    b"--B\r\nContent-Disposition: form-data; name=\"a\r\n\r\nx\r\n--B--",
    b"--Bjunk\r\nContent-Disposition: form-data; name=\"a\"\r\n\r\nx\r\n--B--",
    b"--B\r\nbroken header\r\n\r\nx\r\n--B--",
])
def test_malformed_bodies(body: bytes) -> None:
    with pytest.raises(MultipartError):
        parse(body, b"B")


# ---- the endpoint ---------------------------------------------------------------------

@pytest.fixture(scope="module")
def sim() -> Iterator[SimProcess]:
    with SimProcess(["--transcription", "--served-model-name", "whisper", "--ttft-ms", "1", "--itl-ms", "0"]) as s:
        yield s


def _transcribe(sim: SimProcess, audio: bytes, **fields: str) -> httpx.Response:
    return httpx.post(f"{sim.base_url}/audio/transcriptions", files={"file": ("a.wav", audio, "audio/wav")},
                      data={"model": "whisper", **fields}, timeout=30)


def test_json_shape_usage_and_determinism(sim: SimProcess) -> None:
    audio = wav(4.2)
    before = sim.metrics()
    r = _transcribe(sim, audio)
    assert r.status_code == 200
    body = r.json()
    assert set(body) == {"text", "usage"} and body["usage"] == {"type": "duration", "seconds": 5}
    n_words = round(4.2 * 2.5)
    assert tokens.count_text(body["text"]) == n_words
    after = sim.metrics()
    assert after["vllm:generation_tokens_total"] - before["vllm:generation_tokens_total"] == n_words
    assert after["vllm:prompt_tokens_total"] - before["vllm:prompt_tokens_total"] == 4
    assert _transcribe(sim, audio).json()["text"] == body["text"]
    assert _transcribe(sim, wav(4.2, seed=1)).json()["text"] != body["text"]
    text = _transcribe(sim, audio, response_format="text")
    assert text.headers["content-type"].startswith("text/plain") and text.text == body["text"]
    verbose = _transcribe(sim, audio, response_format="verbose_json", language="de").json()
    assert verbose["text"] == body["text"] and verbose["language"] == "de" and verbose["duration"] == "4.20"


def test_openai_sdk_and_large_upload(sim: SimProcess) -> None:
    audio = wav(300.0)  # ~9.6 MB: many TCP reads, one body
    with OpenAI(base_url=sim.base_url, api_key="x", max_retries=0, timeout=60) as client:
        t = client.audio.transcriptions.create(model="whisper", file=("long.wav", audio, "audio/wav"))
    assert tokens.count_text(t.text) == 750


def test_stream_chunks_and_usage(sim: SimProcess) -> None:
    audio = wav(2.0)
    unary = _transcribe(sim, audio).json()["text"]
    with httpx.stream("POST", f"{sim.base_url}/audio/transcriptions", files={"file": ("a.wav", audio)},
                      data={"stream": "true", "stream_include_usage": "true"}, timeout=30) as r:
        assert r.status_code == 200
        lines = [ln[6:] for ln in r.iter_lines() if ln.startswith("data: ")]
    assert lines[-1] == "[DONE]"
    chunks: list[dict[str, Any]] = [json.loads(x) for x in lines[:-1]]
    assert all(c["object"] == "transcription.chunk" and c["id"].startswith("transcribe-") for c in chunks)
    deltas = chunks[:-1]
    assert "".join(c["choices"][0]["delta"]["content"] for c in deltas) == unary
    assert all("finish_reason" not in c["choices"][0] for c in deltas[:-1])
    assert deltas[-1]["choices"][0]["finish_reason"] == "stop"
    assert chunks[-1]["choices"] == [] and chunks[-1]["usage"] == {
        "prompt_tokens": 4, "completion_tokens": len(deltas), "total_tokens": 4 + len(deltas)}


def _raw(sim: SimProcess, body: bytes, ctype: str) -> tuple[int, dict[str, Any]]:
    status, raw = sim.request("POST", "/v1/audio/transcriptions", body, {"Content-Type": ctype})
    return status, json.loads(raw)


def test_errors(sim: SimProcess) -> None:
    status, r = _raw(sim, b"--B\r\nContent-Disposition: form-data; name=\"file\"; filename=\"a\"\r\n\r\nxx",
                     "multipart/form-data; boundary=B")
    assert status == 400 and r["error"] == {"message": "There was an error parsing the body", "type": "Bad Request",
                                            "param": None, "code": 400}
    status, r = _raw(sim, b'{"file": "x"}', "application/json")
    assert status == 400 and r["error"]["param"] == "body.file"
    status, r = _raw(sim, b"--B\r\nContent-Disposition: form-data; name=\"file\"\r\n\r\nnot a file\r\n--B--\r\n",
                     "multipart/form-data; boundary=B")
    assert status == 422 and r["error"]["message"] == "Expected 'file' to be a file-like object, not 'str'."
    assert _transcribe(sim, wav(1), response_format="srt").status_code == 400
    assert _transcribe(sim, wav(1), response_format="yaml").json()["error"]["param"] == "body.response_format"
    r1 = _transcribe(sim, wav(1), stream_include_usage="true")
    assert r1.status_code == 400 and r1.json()["error"]["param"] == "stream_include_usage"
    r2 = httpx.post(f"{sim.base_url}/audio/transcriptions", files={"file": ("a.wav", wav(1))},
                    data={"model": "nope"}, timeout=10)
    assert r2.status_code == 404 and r2.json()["error"]["message"].startswith("The model `nope` does not exist. Valid aliases: ")
    big = b"\0" * (25 * 1024 * 1024 + 1)
    r3 = _transcribe(sim, big)
    assert r3.status_code == 400 and r3.json()["error"]["message"] == "Maximum file size exceeded"


def test_chat_sim_has_no_transcriptions() -> None:
    with SimProcess(["--served-model-name", "m"]) as sim:
        r = httpx.post(f"{sim.base_url}/audio/transcriptions", files={"file": ("a.wav", wav(1))}, timeout=10)
        assert r.status_code == 501 and r.json()["error"] == {
            "message": "The model does not support Transcriptions API", "type": "NotImplementedError", "param": None,
            "code": 501}


def test_duration_fallback_for_non_wav() -> None:
    from gateway.sim.audio import audio_seconds

    assert math.isclose(audio_seconds(b"\0" * 64000), 2.0)
    assert math.isclose(audio_seconds(wav(3.0, rate=8000)), 3.0)
