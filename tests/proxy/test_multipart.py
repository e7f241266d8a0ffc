"""multipart/form-data: the fields routing reads, and the one-slice model edit."""

from __future__ import annotations

import pytest

from gateway.errors import GatewayError
from gateway.proxy import multipart

B = b"BoUnD"


def form(*parts: tuple[str, bytes, str | None]) -> bytes:
    out = b"preamble\r\n"
    for name, value, filename in parts:
        disp = f'form-data; name="{name}"' + (f'; filename="{filename}"' if filename else "")
        out += b"--" + B + f"\r\nContent-Disposition: {disp}\r\n\r\n".encode() + value + b"\r\n"
    return out + b"--" + B + b"--\r\n"


def test_fields_after_a_binary_file_and_minimal_model_edit() -> None:
    audio = bytes(range(256)) * 10 + b"\r\n--BoUn"  # delimiter-like bytes inside the file
    raw = form(("file", audio, "a.wav"), ("model", b"whisper-1", None), ("stream", b"true", None))
    parts = multipart.parts(raw, multipart.boundary('multipart/form-data; boundary="BoUnD"'))
    assert [(p.name, p.filename) for p in parts] == [("file", "a.wav"), ("model", None), ("stream", None)]
    assert raw[parts[0].start : parts[0].end] == audio
    assert multipart.text_fields(raw, parts) == {"model": "whisper-1", "stream": "true"}
    new = multipart.with_field(raw, parts, "model", "engine-asr")
    assert new == raw.replace(b"whisper-1", b"engine-asr")
    assert multipart.with_field(raw, parts, "model", "whisper-1") is raw


def test_added_field_goes_after_every_part_and_leaves_their_offsets() -> None:
    audio = bytes(range(256)) * 4
    raw = form(("file", audio, "a.wav"), ("model", b"whisper-1", None))
    parts = multipart.parts(raw, B)
    added = multipart.with_added_field(raw, parts, B, "stream_include_usage", "true")
    again = multipart.parts(added, B)
    assert [(p.name, p.start, p.end) for p in again[:2]] == [(p.name, p.start, p.end) for p in parts]
    assert multipart.text_fields(added, again) == {"model": "whisper-1", "stream_include_usage": "true"}
    assert added[again[0].start : again[0].end] == audio
    # The model edit still applies to the grown body (it only moves what follows it).
    edited = multipart.with_field(added, parts, "model", "engine-asr")
    assert multipart.text_fields(edited, multipart.parts(edited, B)) == {
        "model": "engine-asr", "stream_include_usage": "true"}


@pytest.mark.parametrize("ctype, raw", [
    ("application/json", b"{}"),
    ("multipart/form-data", b"--x\r\n"),
    ("multipart/form-data; boundary=BoUnD", b"no delimiter"),
    ("multipart/form-data; boundary=BoUnD", b"--BoUnD\r\nContent-Disposition: form-data; name=\"a\"\r\n\r\nunterminated"),
    ("multipart/form-data; boundary=BoUnD", b"--BoUnD\r\nX: y\r\n\r\nv\r\n--BoUnD--"),  # no part name
    ("multipart/form-data; boundary=BoUnD", b"--BoUnDjunk"),
])  # fmt: skip
def test_malformed_is_a_400(ctype: str, raw: bytes) -> None:
    with pytest.raises(GatewayError) as e:
        multipart.parts(raw, multipart.boundary(ctype))
    assert e.value.status == 400 and e.value.code in ("invalid_multipart", "invalid_content_type")
