"""multipart/form-data requests (audio transcriptions): find the form fields the gateway
routes by, and change the `model` value without touching any other byte.

The upload is forwarded as the client sent it (same boundary, same content-type, file
bytes never decoded or re-encoded). Only the small text parts are read; the file part
is skipped with one `find` for the next delimiter.
"""

from __future__ import annotations

from dataclasses import dataclass

from ..errors import invalid_request

_MALFORMED = "There was an error parsing the body: malformed multipart/form-data"


@dataclass(frozen=True, slots=True)
class Part:
    name: str
    filename: str | None
    start: int  # the part's content, raw[start:end]
    end: int


def boundary(content_type: str | None) -> bytes:
    """The boundary of a `multipart/form-data; boundary=...` content-type, or a 400."""
    if not content_type or not content_type.lower().startswith("multipart/form-data"):
        raise invalid_request(
            "This endpoint expects a multipart/form-data body (file upload).", code="invalid_content_type"
        )
    for param in content_type.split(";")[1:]:
        k, _, v = param.strip().partition("=")
        if k.lower() == "boundary" and v:
            v = v.strip('"')
            if 0 < len(v) <= 200:
                return v.encode("latin-1")
    raise invalid_request(_MALFORMED + " (no boundary in the content-type).", code="invalid_multipart")


def parts(raw: bytes, bound: bytes) -> list[Part]:
    """Every part of the body, or a 400 if it is not well-formed multipart."""
    delim = b"--" + bound
    i = raw.find(delim)
    if i < 0:
        raise invalid_request(_MALFORMED + " (no part).", code="invalid_multipart")
    out: list[Part] = []
    sep = b"\r\n" + delim
    while True:
        i += len(delim)
        if raw.startswith(b"--", i):  # the closing delimiter
            return out
        if not raw.startswith(b"\r\n", i):
            break
        head_end = raw.find(b"\r\n\r\n", i + 2)
        if head_end < 0:
            break
        name, filename = _disposition(raw[i + 2 : head_end])
        start = head_end + 4
        end = raw.find(sep, start)
        if end < 0 or name is None:
            break
        out.append(Part(name, filename, start, end))
        i = end + 2
    raise invalid_request(_MALFORMED + ".", code="invalid_multipart")


def _disposition(head: bytes) -> tuple[str | None, str | None]:
    name = filename = None
    for line in head.split(b"\r\n"):
        key, _, value = line.partition(b":")
        if key.strip().lower() != b"content-disposition":
            continue
        for item in value.decode("utf-8", "replace").split(";")[1:]:
            k, _, v = item.strip().partition("=")
            v = v.strip().strip('"')
            if k.lower() == "name":
                name = v
            elif k.lower() == "filename":
                filename = v
    return name, filename


def text_fields(raw: bytes, all_parts: list[Part]) -> dict[str, str]:
    """The form's text fields (file parts excluded), first value per name."""
    out: dict[str, str] = {}
    for p in all_parts:
        if p.filename is None and p.name not in out:
            out[p.name] = raw[p.start : p.end].decode("utf-8", "replace")
    return out


def with_added_field(raw: bytes, all_parts: list[Part], bound: bytes, name: str, value: str) -> bytes:
    """`raw` with one more text field, after the last part: every existing part keeps its
    offsets, so `with_field` still applies to the result."""
    at = all_parts[-1].end
    part = b"\r\n--" + bound + b'\r\nContent-Disposition: form-data; name="' + name.encode() + b'"\r\n\r\n'
    return raw[:at] + part + value.encode() + raw[at:]


def with_field(raw: bytes, all_parts: list[Part], name: str, value: str) -> bytes:
    """`raw` with the first text field `name` set to `value` (only that slice changes)."""
    for p in all_parts:
        if p.name == name and p.filename is None:
            new = value.encode()
            if raw[p.start : p.end] == new:
                return raw
            return raw[: p.start] + new + raw[p.end :]
    return raw
