"""A query file uploaded as ``multipart/form-data``, streamed to a temporary file under a size limit.

The body is parsed as it arrives (python-multipart's streaming ``MultipartParser``, the parser Starlette uses) and the
``file`` part written straight to ``vatt-serve-upload-*`` in the upload folder: a body is never held in memory, an
upload past the limit is refused (413) as soon as its bytes pass it (at once when its Content-Length says so), and
the temporary file is removed on every exit (answered, refused, malformed, client gone, server stopped).
"""

from __future__ import annotations

import os
import re
import tempfile
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO

import anyio.to_thread
from python_multipart.exceptions import FormParserError
from python_multipart.multipart import MultipartParser, parse_options_header
from starlette.requests import Request

from vattcli.serve.service import RequestError

FIELD = "file"
PREFIX = "vatt-serve-upload-"
FORM_OVERHEAD = 64 * 1024  # bytes a body may hold beyond the file: boundaries, part headers, small fields
_SUFFIX_RE = re.compile(r"\.[A-Za-z0-9]{1,8}")


@dataclass
class Upload:
    path: Path  # the temporary file
    name: str  # the file name the client gave, base name only, for messages


@dataclass
class _Parts:
    """Callback state of the parser: the part being read and what the file part has delivered so far."""

    header: bytes = b""
    value: bytes = b""
    disposition: bytes = b""
    is_file: bool = False
    name: str | None = None  # the file part's name, once its headers are read
    pending: list[bytes] = field(default_factory=list)  # file bytes not yet written
    other: int = 0  # bytes of other parts (bounded by FORM_OVERHEAD; the parser bounds part headers itself)
    ended: bool = False

    def callbacks(self) -> dict:
        return {"on_part_begin": self._begin, "on_header_field": self._header, "on_header_value": self._value,
                "on_header_end": self._header_end, "on_headers_finished": self._headers_done,
                "on_part_data": self._data, "on_end": self._end}

    def _begin(self) -> None:
        self.disposition, self.is_file = b"", False

    def _header(self, data: bytes, start: int, end: int) -> None:
        self.header += data[start:end]

    def _value(self, data: bytes, start: int, end: int) -> None:
        self.value += data[start:end]

    def _header_end(self) -> None:
        if self.header.lower() == b"content-disposition":
            self.disposition = self.value
        self.header, self.value = b"", b""

    def _headers_done(self) -> None:
        _, options = parse_options_header(self.disposition)
        self.is_file = (options.get(b"name") == FIELD.encode() and b"filename" in options and self.name is None)
        if self.is_file:
            self.name = _client_name(options[b"filename"].decode("utf-8", "replace"))

    def _data(self, data: bytes, start: int, end: int) -> None:
        if self.is_file:
            self.pending.append(data[start:end])
        else:
            self.other += end - start

    def _end(self) -> None:
        self.ended = True


def _client_name(filename: str) -> str:
    """The base name of a client's file name (browsers send one; others may send a path), at most 200 characters."""
    name = filename.replace("\\", "/").rsplit("/", 1)[-1].strip()
    return (name or "upload")[:200]


def _boundary(request: Request) -> bytes:
    kind, options = parse_options_header(request.headers.get("content-type"))
    if kind != b"multipart/form-data" or not options.get(b"boundary"):
        raise RequestError(f"POST /api/search takes multipart/form-data with the query file in a field {FIELD!r}")
    return options[b"boundary"]


def _too_big(limit: int) -> RequestError:
    return RequestError(f"the uploaded file is larger than the server's limit of {limit / 1e6:g} MB "
                        "(vatt serve --max-upload-mb)", 413)


def _check_length(request: Request, limit: int) -> None:
    length = request.headers.get("content-length")
    if length is not None and length.isdigit() and int(length) > limit + FORM_OVERHEAD:
        raise _too_big(limit)


@asynccontextmanager
async def receive_upload(request: Request, *, limit: int, folder: Path | None = None) -> AsyncIterator[Upload]:
    """Stream the request's ``file`` part into a temporary file in ``folder`` (default: the system's temp folder),
    at most ``limit`` bytes; yields it, removes it on exit."""
    boundary = _boundary(request)
    _check_length(request, limit)
    handle, name = tempfile.mkstemp(prefix=PREFIX, dir=folder)
    path = Path(name)
    try:
        with os.fdopen(handle, "wb") as out:
            parts = await _read_parts(request, boundary, out, limit)
        if parts.name is None:
            raise RequestError(f"no file in the request: send the query file in a multipart field {FIELD!r}")
        suffix = Path(parts.name).suffix
        if _SUFFIX_RE.fullmatch(suffix):  # keep the suffix: some containers are easier to probe with it
            path = path.rename(path.with_name(path.name + suffix.lower()))
        yield Upload(path, parts.name)
    finally:
        path.unlink(missing_ok=True)


async def _read_parts(request: Request, boundary: bytes, out: BinaryIO, limit: int) -> _Parts:
    parts = _Parts()
    parser = MultipartParser(boundary, parts.callbacks())
    written = received = 0
    try:
        async for chunk in request.stream():
            received += len(chunk)
            if received > limit + FORM_OVERHEAD:
                raise _too_big(limit)
            parser.write(chunk)
            if parts.pending:
                data = b"".join(parts.pending)
                parts.pending.clear()
                written += len(data)
                if written > limit:
                    raise _too_big(limit)
                await anyio.to_thread.run_sync(out.write, data)
            if parts.other > FORM_OVERHEAD:
                raise RequestError(f"the form holds more than {FORM_OVERHEAD // 1024} KiB besides the file's data",
                                   413)
        parser.finalize()
    except FormParserError as e:
        raise RequestError(f"malformed multipart body ({str(e).splitlines()[0][:120]})") from None
    if not parts.ended:
        raise RequestError("the multipart body ended before its closing boundary")
    return parts
