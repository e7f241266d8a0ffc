"""proxy/audio.py: an upload's duration from its header alone (WAV, FLAC), else None."""

from __future__ import annotations

import struct

import pytest

from gateway.proxy.audio import duration


def wav(seconds: float, rate: int = 16000, channels: int = 1, bits: int = 16, *, fmt_tag: int = 1,
        extra_chunk: bytes = b"", size: int | None = None) -> bytes:
    block = channels * bits // 8
    data = b"\x00" * (int(seconds * rate) * block)
    fmt = struct.pack("<HHIIHH", fmt_tag, channels, rate, rate * block, block, bits)
    if fmt_tag == 0xFFFE:  # WAVE_FORMAT_EXTENSIBLE: a 40-byte fmt chunk
        fmt += struct.pack("<HHI", 22, bits, 0) + b"\x01\x00\x00\x00\x00\x00\x10\x00\x80\x00\x00\xaa\x00\x38\x9b\x71"
    body = b"WAVE" + b"fmt " + struct.pack("<I", len(fmt)) + fmt + extra_chunk
    body += b"data" + struct.pack("<I", len(data) if size is None else size) + data
    return b"RIFF" + struct.pack("<I", len(body)) + body


def flac_header(rate: int, samples: int, channels: int = 1, bits: int = 16) -> bytes:
    word = (rate << 44) | ((channels - 1) << 41) | ((bits - 1) << 36) | samples
    streaminfo = struct.pack(">HH", 4096, 4096) + b"\x00\x00\x10\x00\x00\x20" + struct.pack(">Q", word) + b"\x00" * 16
    return b"fLaC" + bytes([0x80]) + len(streaminfo).to_bytes(3, "big") + streaminfo


@pytest.mark.parametrize(("seconds", "rate", "channels", "bits"), [
    (1.5, 16000, 1, 16), (2.25, 44100, 2, 16), (0.3, 8000, 1, 32), (10.0, 48000, 2, 24),
])  # fmt: skip
def test_wav_duration_from_the_data_size_and_byte_rate(seconds: float, rate: int, channels: int, bits: int) -> None:
    assert duration(wav(seconds, rate, channels, bits)) == pytest.approx(seconds)


def test_wav_extensible_and_chunks_before_data_including_odd_sized_ones() -> None:
    assert duration(wav(2.0, fmt_tag=0xFFFE)) == pytest.approx(2.0)
    odd = b"LIST" + struct.pack("<I", 5) + b"INFOx" + b"\x00"  # 5 bytes + 1 pad byte
    assert duration(wav(1.0, extra_chunk=odd)) == pytest.approx(1.0)


def test_wav_from_a_streaming_writer_counts_the_bytes_present() -> None:
    for size in (0, 0xFFFFFFFF):
        assert duration(wav(3.0, size=size)) == pytest.approx(3.0)
    # A size larger than the upload (a truncated file): what arrived.
    assert duration(wav(1.0, size=10 * 32000)) == pytest.approx(1.0)


def test_flac_duration_from_streaminfo() -> None:
    assert duration(flac_header(44100, 44100 * 3)) == pytest.approx(3.0)
    assert duration(flac_header(16000, 8000) + b"frames...") == pytest.approx(0.5)
    assert duration(flac_header(16000, 0)) is None  # "total samples unknown"


@pytest.mark.parametrize("data", [
    b"", b"RIFF", b"RIFF\x00\x00\x00\x00WAVE", b"ID3\x04mp3 data", b"OggS\x00\x02", b"\x1aE\xdf\xa3webm",
    b"RIFF\x10\x00\x00\x00WAVEdata\x08\x00\x00\x00\x00\x00",  # data before fmt: no byte rate
    b"fLaC\x01\x00\x00\x22" + b"\x00" * 40,  # first block is not STREAMINFO
    b"fLaC\x80\x00",  # cut short
])  # fmt: skip
def test_formats_without_a_duration_in_the_header_give_none(data: bytes) -> None:
    assert duration(data) is None


def test_reads_a_memoryview_slice_without_copying_the_upload() -> None:
    raw = b"--boundary\r\n" + wav(1.25) + b"\r\n--boundary--"
    view = memoryview(raw)[12 : len(raw) - 14]
    assert duration(view) == pytest.approx(1.25)
