"""The duration of an uploaded audio file, read from its header: nothing is decoded.

Used to meter transcriptions when the engine reports no duration (vLLM's streams carry
token usage only; its `text` format carries none). Reads a few dozen bytes at known
offsets, so it costs the same for a 1 s clip and a 25 MB one.

- WAV (RIFF/WAVE, also WAVE_FORMAT_EXTENSIBLE): `data` chunk size / `fmt ` byte rate;
- FLAC: STREAMINFO's total samples / sample rate (0 samples means "unknown").

Anything else (MP3, OGG, WebM, M4A) has no duration in a fixed place: None.
"""

from __future__ import annotations

import struct

_MAX_CHUNKS = 64  # a WAV with more chunks before `data` than this is not worth walking


def duration(data: bytes | memoryview) -> float | None:
    """Seconds of audio in `data`, or None when the header does not say."""
    head = bytes(data[:4])
    if head == b"RIFF" and bytes(data[8:12]) == b"WAVE":
        return _wav(data)
    if head == b"fLaC":
        return _flac(data)
    return None


def _wav(data: bytes | memoryview) -> float | None:
    pos, byte_rate = 12, 0
    for _ in range(_MAX_CHUNKS):
        if pos + 8 > len(data):
            return None
        cid = bytes(data[pos : pos + 4])
        (size,) = struct.unpack_from("<I", data, pos + 4)
        if cid == b"fmt " and size >= 16 and pos + 20 <= len(data):
            (byte_rate,) = struct.unpack_from("<I", data, pos + 16)
        elif cid == b"data":
            if byte_rate <= 0:
                return None
            # A streaming writer may leave the size at 0 or 0xFFFFFFFF: trust the bytes we have.
            available = len(data) - pos - 8
            n = available if size in (0, 0xFFFFFFFF) else min(size, available)
            return n / byte_rate
        pos += 8 + size + (size & 1)
    return None


def _flac(data: bytes | memoryview) -> float | None:
    # "fLaC", then metadata blocks; STREAMINFO must be first: 4-byte block header, then
    # 10 bytes of block/frame sizes, then 20 bits rate, 3 channels, 5 bps, 36 bits samples.
    if len(data) < 8 + 18 or data[4] & 0x7F != 0:
        return None
    (word,) = struct.unpack_from(">Q", data, 8 + 10)
    rate = word >> 44
    samples = word & ((1 << 36) - 1)
    if rate == 0 or samples == 0:
        return None
    return samples / rate
