"""/v1/audio/transcriptions through the gateway against real vLLM 0.32 (CPU build) serving
the tiny Whisper that scripts/realengines/make_tiny_whisper.py builds offline.

The gateway spawns one vLLM for a pool of kind `transcription` (its own gateway, not the
session's: that one runs the chat and embedding engines, and one more vLLM is ~3 GiB).
The official openai SDK uploads WAV files generated here; the model transcribes any
audio as the same fixed sentence, so the text is asserted exactly.
"""

from __future__ import annotations

import io
import math
import os
import struct
import time
from collections.abc import Iterator
from typing import Any

import httpx
import openai
import pytest

from .harness import CLIENT_KEY, VLLM_CPU_ARGS, VLLM_ENV, Gateway, RealEngines, engine_metrics, sha, wait_for

POOL = "whisper"
ALIAS = "whisper-1"
LIMITED_KEY = "sk-real-limited"  # a key whose allowlist does not include the Whisper pool
HEADERS = {"authorization": f"Bearer {CLIENT_KEY}"}


class AsrGateway(Gateway):
    def config(self, pools: dict[str, Any]) -> dict[str, Any]:
        cfg = super().config(pools)
        cfg["auth"]["keys"].append({"name": "limited", "key_sha256": sha(LIMITED_KEY), "models": ["nothing-else"]})
        return cfg


def wav(seconds: float, rate: int = 16000, hz: float = 440.0) -> bytes:
    """A mono 16-bit PCM sine tone, as a complete WAV file."""
    n = int(seconds * rate)
    samples = b"".join(struct.pack("<h", int(9000 * math.sin(2 * math.pi * hz * i / rate))) for i in range(n))
    fmt = struct.pack("<HHIIHH", 1, 1, rate, rate * 2, 2, 16)
    body = b"WAVEfmt " + struct.pack("<I", len(fmt)) + fmt + b"data" + struct.pack("<I", len(samples)) + samples
    return b"RIFF" + struct.pack("<I", len(body)) + body


@pytest.fixture(scope="module")
def asr(engines: RealEngines, tmp_path_factory: pytest.TempPathFactory) -> Iterator[AsrGateway]:
    only = os.environ.get("REALENGINES_ONLY")
    if only and only != "vllm":
        pytest.skip(f"REALENGINES_ONLY={only}: the Whisper vLLM is not spawned")
    if engines.whisper_hf is None:
        pytest.skip("no tiny Whisper in the env file: run scripts/realengines/setup.sh")
    pool = {
        "engine": "vllm",
        "kind": "transcription",
        "command": [engines.vllm, "serve"],
        "model": engines.whisper_hf,
        "env": dict(VLLM_ENV),
        # Whisper's decoder holds 448 positions; vLLM refuses a longer max-model-len.
        "args": [*VLLM_CPU_ARGS, "--max-model-len", "448", "--max-num-seqs", "4"],
        "startup_timeout": 900,
        "health": {"interval": 1, "metrics_interval": 0.5},
        "aliases": [ALIAS],
    }
    gw = AsrGateway(tmp_path_factory.mktemp("asrgw"), {POOL: pool})
    try:
        gw.start()
        yield gw
    finally:
        gw.stop()


@pytest.fixture(scope="module")
def client(asr: AsrGateway) -> Iterator[openai.OpenAI]:
    with openai.OpenAI(base_url=asr.base_url, api_key=CLIENT_KEY, max_retries=0, timeout=120) as c:
        yield c


@pytest.fixture(scope="module")
def expect(engines: RealEngines) -> dict[str, Any]:
    assert engines.whisper_expect is not None
    return engines.whisper_expect


def engine_tokens(gw: Gateway) -> tuple[int, int]:
    m = engine_metrics(gw.engine_url(POOL))
    return int(m.get("vllm:prompt_tokens_total", 0)), int(m.get("vllm:generation_tokens_total", 0))


def ledger(gw: Gateway) -> dict[str, Any]:
    return gw.usage("pool").get(POOL, {})


def quiet_ledger(gw: Gateway) -> dict[str, Any]:
    """The ledger once the previous tests' rows have landed (group commit every 100 ms): a
    row landing after a test read its `before` was billed to that test."""
    last = ledger(gw)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        time.sleep(0.3)
        now = ledger(gw)
        if now == last:
            return now
        last = now
    return last


def settled(gw: Gateway, requests: int) -> dict[str, Any]:
    assert wait_for(lambda: int(ledger(gw).get("requests", 0)) >= requests, 10, 0.2), ledger(gw)
    return ledger(gw)


def test_sdk_transcribes_with_language_and_with_detection(client: openai.OpenAI, expect: dict[str, Any]) -> None:
    t = client.audio.transcriptions.create(model=POOL, file=("tone.wav", io.BytesIO(wav(1.5)), "audio/wav"),
                                           language="en")
    assert t.text == expect["text"]
    # No language: vLLM first decodes one language token (the model says <|en|>), then transcribes.
    t2 = client.audio.transcriptions.create(model=ALIAS, file=("tone.wav", io.BytesIO(wav(2.2)), "audio/wav"))
    assert t2.text == expect["text"]
    usage = t2.model_dump()["usage"]
    assert usage == {"type": "duration", "seconds": 3}  # vLLM rounds the 2.2 s up
    # `text` is answered as JSON with usage by vLLM 0.32 too; the SDK hands back the body.
    raw = client.audio.transcriptions.with_raw_response.create(
        model=POOL, file=("tone.wav", io.BytesIO(wav(0.5)), "audio/wav"), language="en", response_format="text")
    assert expect["text"] in raw.text


def test_other_sample_rates_are_resampled_by_the_engine(client: openai.OpenAI, expect: dict[str, Any]) -> None:
    t = client.audio.transcriptions.create(model=POOL, file=("cd.wav", io.BytesIO(wav(1.0, rate=44100)), "audio/wav"),
                                           language="en")
    assert t.text == expect["text"]


def test_stream_relays_vllm_chunks_and_meters_its_tokens(asr: AsrGateway, client: openai.OpenAI,
                                                        expect: dict[str, Any]) -> None:
    before = quiet_ledger(asr)
    e0 = engine_tokens(asr)
    events = [e.to_dict() for e in client.audio.transcriptions.create(
        model=POOL, file=("tone.wav", io.BytesIO(wav(1.5)), "audio/wav"), language="en", stream=True)]
    text = "".join(c["delta"].get("content", "") for e in events for c in e.get("choices", []))
    assert text == expect["text"]
    # The gateway asked for vLLM's usage chunk (the client did not) and kept it from the client.
    assert all(e["model"] == POOL for e in events) and not any("usage" in e for e in events)
    row = settled(asr, int(before.get("requests", 0)) + 1)
    seen: list[tuple[int, int]] = []

    def same() -> bool:
        nonlocal row
        e1, row = engine_tokens(asr), ledger(asr)
        seen[:] = [(e1[0] - e0[0], e1[1] - e0[1]),
                   (row["prompt_tokens"] - before.get("prompt_tokens", 0),
                    row["completion_tokens"] - before.get("completion_tokens", 0))]
        return seen[0][1] == seen[1][1] == expect["completion_tokens"]

    assert wait_for(same, 5, 0.2), seen
    # vLLM's stream usage counts the audio as prompt tokens too, one per mel frame
    # (ceil(seconds * 16000 / hop 160): 150 for 1.5 s), which its own prompt-token counter
    # does not (it counts the 4 decoder start tokens). The ledger keeps the usage vLLM
    # reports to clients; the difference is exactly that term.
    assert seen[0][0] == expect["prompt_tokens"] and seen[1][0] == seen[0][0] + 150, seen
    assert row["estimated_requests"] == before.get("estimated_requests", 0)
    assert row["audio_seconds"] - before.get("audio_seconds", 0) == 2  # from the WAV header: 1.5 s -> 2


def test_ledger_audio_seconds_equal_vllms_usage(asr: AsrGateway, client: openai.OpenAI) -> None:
    before = quiet_ledger(asr)
    reported = 0
    for seconds in (0.4, 3.7, 6.0):
        t = client.audio.transcriptions.create(model=POOL, file=("t.wav", io.BytesIO(wav(seconds)), "audio/wav"),
                                               language="en")
        reported += t.model_dump()["usage"]["seconds"]
    assert reported == 1 + 4 + 6
    row = settled(asr, int(before.get("requests", 0)) + 3)
    assert row["audio_seconds"] - before.get("audio_seconds", 0) == reported
    # vLLM's non-stream answers report seconds and no tokens: the ledger bills seconds only.
    assert row["total_tokens"] == before.get("total_tokens", 0)
    metrics = httpx.get(asr.url + "/metrics", timeout=10).text
    billed = [ln for ln in metrics.splitlines() if ln.startswith("gateway_audio_seconds_total{") and POOL in ln]
    assert billed and float(billed[0].rsplit(" ", 1)[1]) >= reported


def test_allowlist_refusal_and_malformed_uploads_are_openai_shaped(asr: AsrGateway) -> None:
    with openai.OpenAI(base_url=asr.base_url, api_key=LIMITED_KEY, max_retries=0) as c, \
            pytest.raises(openai.NotFoundError) as nf:
        c.audio.transcriptions.create(model=POOL, file=("t.wav", io.BytesIO(wav(0.5)), "audio/wav"))
    assert nf.value.body["code"] == "model_not_found"  # type: ignore[index]
    url = asr.base_url + "/audio/transcriptions"
    for content, ctype, code in [
        (b"--b\r\nno end of headers", "multipart/form-data; boundary=b", "invalid_multipart"),
        (b'{"model": "whisper"}', "application/json", "invalid_content_type"),
    ]:
        r = httpx.post(url, content=content, headers={**HEADERS, "content-type": ctype}, timeout=30)
        assert r.status_code == 400 and r.json()["error"]["code"] == code, r.text
        assert set(r.json()["error"]) == {"message", "type", "param", "code"}
    # Well-formed multipart whose file is not audio: vLLM's own 400, in OpenAI's shape.
    r = httpx.post(url, files={"file": ("x.wav", b"not audio at all", "audio/wav")}, data={"model": POOL},
                   headers=HEADERS, timeout=60)
    assert r.status_code == 400, r.text
    assert set(r.json()["error"]) == {"message", "type", "param", "code"}
