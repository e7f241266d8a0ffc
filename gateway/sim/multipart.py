"""A strict multipart/form-data parser (RFC 7578 / RFC 2046) for whole in-memory bodies.

The sim's HTTP layer hands handlers the complete body (capped at http.MAX_BODY_BYTES,
413 beyond), so parsing is a linear scan with bytes.find: no per-byte Python loop, fine
for tens of MB. Anything malformed raises MultipartError; the caller answers 400 the way
vLLM does (FastAPI: "There was an error parsing the body").
"""

from __future__ import annotations

from dataclasses import dataclass

_TOKEN_OK = set(b"0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ'()+_,-./:=? ")


class MultipartError(ValueError):
    pass


@dataclass
class Part:
    name: str
    filename: str | None
    content_type: str | None
    data: bytes


def _params(value: str) -> tuple[str, dict[str, str]]:
    """`form-data; name="file"; filename="a b.wav"` -> ("form-data", {...}); quotes may hold ';'."""
    out: dict[str, str] = {}
    head, _, rest = value.partition(";")
    i, n = 0, len(rest)
    while i < n:
        while i < n and rest[i] in " \t;":
            i += 1
        eq = rest.find("=", i)
        if eq == -1:
            if rest[i:].strip():
                raise MultipartError(f"bad header parameter {rest[i:]!r}")
            break
        key = rest[i:eq].strip().lower()
        i = eq + 1
        if i < n and rest[i] == '"':
            j = i + 1
            buf = []
            while j < n and rest[j] != '"':
                if rest[j] == "\\" and j + 1 < n:
                    j += 1
                buf.append(rest[j])
                j += 1
            if j >= n:
                raise MultipartError("unterminated quoted header parameter")
            out[key] = "".join(buf)
            i = j + 1
        else:
            j = rest.find(";", i)
            j = n if j == -1 else j
            out[key] = rest[i:j].strip()
            i = j
    return head.strip().lower(), out


def boundary_of(content_type: str | None) -> bytes:
    if not content_type:
        raise MultipartError("missing Content-Type")
    kind, params = _params(content_type)
    if kind != "multipart/form-data":
        raise MultipartError(f"Content-Type is {kind}, not multipart/form-data")
    boundary = params.get("boundary", "").encode("latin-1")
    if not 1 <= len(boundary) <= 70 or any(c not in _TOKEN_OK for c in boundary) or boundary.endswith(b" "):
        raise MultipartError("missing or invalid multipart boundary")
    return boundary


def _next_delimiter(body: bytes, marker: bytes, start: int) -> int:
    """Index of the next CRLF--boundary that IS a delimiter: followed by "--", or by optional
    blanks and CRLF. A boundary-prefixed run of bytes inside the data (`--B-x`) is data."""
    at = start
    while True:
        at = body.find(marker, at)
        if at == -1:
            raise MultipartError("multipart body has no closing boundary")
        after = at + len(marker)
        if body.startswith(b"--", after) or body[after:after + 64].lstrip(b" \t").startswith(b"\r\n"):
            return at
        at += 1


def parse(body: bytes, boundary: bytes) -> list[Part]:
    delim = b"--" + boundary
    if body.startswith(delim):
        pos = len(delim)
    else:  # a preamble is allowed; the first delimiter then follows a CRLF
        at = body.find(b"\r\n" + delim)
        if at == -1:
            raise MultipartError("no multipart boundary found in the body")
        pos = at + 2 + len(delim)
    parts: list[Part] = []
    while True:
        if body.startswith(b"--", pos):
            return parts  # closing delimiter; an epilogue after it is ignored
        while body.startswith((b" ", b"\t"), pos):  # transport padding before the CRLF
            pos += 1
        if not body.startswith(b"\r\n", pos):
            raise MultipartError("malformed multipart delimiter line")
        pos += 2
        head_end = body.find(b"\r\n\r\n", pos)
        if head_end == -1:
            raise MultipartError("multipart part without a header block")
        name = filename = ctype = None
        for line in body[pos:head_end].split(b"\r\n"):
            key, sep, value = line.decode("utf-8", "replace").partition(":")
            if not sep:
                raise MultipartError(f"bad multipart header line {line[:80]!r}")
            key = key.strip().lower()
            if key == "content-disposition":
                kind, params = _params(value)
                if kind != "form-data" or "name" not in params:
                    raise MultipartError("part Content-Disposition must be form-data with a name")
                name, filename = params["name"], params.get("filename")
            elif key == "content-type":
                ctype = value.strip()
        if name is None:
            raise MultipartError("multipart part without Content-Disposition")
        data_start = head_end + 4
        end = _next_delimiter(body, b"\r\n" + delim, data_start)
        parts.append(Part(name=name, filename=filename, content_type=ctype, data=body[data_start:end]))
        pos = end + 2 + len(delim)
