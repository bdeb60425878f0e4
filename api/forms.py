"""The submit request's multipart body, read as it streams in, each file straight to disk.

Starlette's own form parsing reads the whole body before the route (and so before the key
is checked), spools every file whatever its size, and takes a body cut off before its
closing boundary for a complete one. Here the route checks the key and takes its tenant's
slot first, then reads the body through python-multipart's push parser:

- each file part goes to a file of its own under the request's directory, hashed as it
  arrives; a part that passes ``max_file_bytes`` stops the reading there (413 ``too_large``,
  and the connection is closed rather than drained);
- more file parts than ``max_files`` stop it too (413 ``too_many_pages``: every file is at
  least one page);
- text fields are held to ``MAX_FIELD_BYTES`` (they are all short);
- a body that ends before its closing boundary, or that is not multipart at all, is 400
  ``invalid_request``.
"""

from __future__ import annotations

import hashlib
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO

import anyio.to_thread
from python_multipart.exceptions import FormParserError
from python_multipart.multipart import MultipartParser, QuerystringParser, parse_options_header
from starlette.requests import ClientDisconnect

from htrq.errors import PageError
from htrq.jobs.uploads import Upload

#: Longest text field; the longest the API takes is a 2,000-character callback URL.
MAX_FIELD_BYTES = 16 * 1024
#: Most text fields in one request (the API reads four).
MAX_FIELDS = 100


class InvalidBody(Exception):
    """A body that cannot be read as a form (answered 400 ``invalid_request``)."""


class TooLarge(PageError):
    """A part over its limit: answered 413, and the rest of the body is not read."""


@dataclass
class Form:
    """The fields (last value of each name) and the files, in order, of one request."""

    fields: dict[str, str] = field(default_factory=dict)
    uploads: list[Upload] = field(default_factory=list)


@dataclass
class _Part:
    name: str = ""
    filename: str | None = None
    is_file: bool = False
    data: bytearray = field(default_factory=bytearray)
    path: Path | None = None
    out: BinaryIO | None = None
    size: int = 0
    digest: Any = field(default_factory=hashlib.sha256)


class _Multipart:
    """python-multipart's callbacks for one body; every write to disk happens here, in the
    thread that feeds the parser, never in the event loop."""

    def __init__(
        self,
        boundary: bytes,
        directory: Path,
        *,
        file_field: str,
        max_file_bytes: int,
        max_files: int,
    ) -> None:
        self.directory, self.file_field = directory, file_field
        self.max_file_bytes, self.max_files = max_file_bytes, max_files
        self.form = Form()
        self.ended = False
        self._part = _Part()
        self._header_name = b""
        self._header_value = b""
        self._disposition = b""
        self._fields = 0
        self.parser = MultipartParser(
            boundary,
            {
                "on_part_begin": self._begin,
                "on_part_data": self._data,
                "on_part_end": self._end_part,
                "on_header_field": self._header_field,
                "on_header_value": self._header_val,
                "on_header_end": self._header_end,
                "on_headers_finished": self._headers_done,
                "on_end": self._end,
            },
        )

    def feed(self, chunk: bytes) -> None:
        try:
            self.parser.write(chunk)
        except FormParserError as exc:
            raise InvalidBody(f"the multipart body cannot be read: {exc}") from None

    def close(self) -> None:
        if self._part.out is not None:
            self._part.out.close()

    def _begin(self) -> None:
        self._part = _Part()
        self._disposition = b""

    def _header_field(self, data: bytes, start: int, end: int) -> None:
        self._header_name += data[start:end]

    def _header_val(self, data: bytes, start: int, end: int) -> None:
        self._header_value += data[start:end]
        if len(self._header_value) > MAX_FIELD_BYTES:
            raise InvalidBody("a part's header is too long")

    def _header_end(self) -> None:
        if self._header_name.lower() == b"content-disposition":
            self._disposition = self._header_value
        self._header_name = self._header_value = b""

    def _headers_done(self) -> None:
        _, options = parse_options_header(self._disposition)
        if b"name" not in options:
            raise InvalidBody("a part has no name (Content-Disposition: form-data; name=...)")
        part = self._part
        part.name = options[b"name"].decode("utf-8", "replace")
        if b"filename" in options:
            part.filename = options[b"filename"].decode("utf-8", "replace")
        # Every part named `files` is a file, with or without a filename (curl -F files=<x).
        part.is_file = part.name == self.file_field
        if part.is_file:
            if len(self.form.uploads) >= self.max_files:
                raise TooLarge(
                    "too_many_pages",
                    f"more than {self.max_files} files, over the limit of pages per job",
                )
            part.path = self.directory / str(len(self.form.uploads))
            part.out = part.path.open("wb")
        else:
            self._fields += 1
            if self._fields > MAX_FIELDS:
                raise InvalidBody(f"more than {MAX_FIELDS} form fields")

    def _data(self, data: bytes, start: int, end: int) -> None:
        part, piece = self._part, data[start:end]
        if not part.is_file:
            part.data += piece
            if len(part.data) > MAX_FIELD_BYTES:
                raise InvalidBody(f"form field {part.name!r} is over {MAX_FIELD_BYTES} bytes")
            return
        part.size += len(piece)
        if part.size > self.max_file_bytes:
            raise TooLarge(
                "too_large",
                f"{part.filename or 'upload'}: over the limit of {self.max_file_bytes} bytes "
                "per file (HTRQ_MAX_UPLOAD_BYTES)",
            )
        part.digest.update(piece)
        assert part.out is not None
        part.out.write(piece)

    def _end_part(self) -> None:
        part = self._part
        if part.is_file:
            assert part.out is not None and part.path is not None
            part.out.close()
            part.out = None
            upload = Upload(part.filename, path=part.path, sha256=part.digest.hexdigest())
            self.form.uploads.append(upload)
        else:
            self.form.fields[part.name] = part.data.decode("utf-8", "replace")

    def _end(self) -> None:
        self.ended = True


async def read_form(
    content_type: str | None,
    stream: AsyncIterator[bytes],
    directory: Path,
    *,
    file_field: str,
    max_file_bytes: int,
    max_files: int,
) -> Form:
    """Read a ``multipart/form-data`` body (or an urlencoded one, which has no files) into
    ``directory``. Raises :class:`InvalidBody` or :class:`TooLarge` as soon as the body
    shows it is one."""
    kind, params = parse_options_header(content_type or "")
    if kind == b"application/x-www-form-urlencoded":
        return await _read_urlencoded(stream)
    if not content_type:
        async for chunk in stream:  # an empty body is a form without files (422 no_files)
            if chunk:
                raise InvalidBody("a body without a Content-Type; send multipart/form-data")
        return Form()
    if kind != b"multipart/form-data":
        raise InvalidBody("the body must be multipart/form-data")
    boundary = params.get(b"boundary")
    if not boundary:
        raise InvalidBody("multipart/form-data without a boundary")
    body = _Multipart(
        boundary,
        directory,
        file_field=file_field,
        max_file_bytes=max_file_bytes,
        max_files=max_files,
    )
    try:
        async for chunk in stream:
            if chunk:
                await anyio.to_thread.run_sync(body.feed, chunk)
    except ClientDisconnect:
        raise InvalidBody("the client went away before the body ended") from None
    finally:
        body.close()
    if not body.ended:
        raise InvalidBody(
            "the multipart body ended before its closing boundary (cut off in transit?); "
            "send the request again"
        )
    return body.form


async def _read_urlencoded(stream: AsyncIterator[bytes]) -> Form:
    form, name, value = Form(), bytearray(), bytearray()

    def on_field_name(data: bytes, start: int, end: int) -> None:
        name.extend(data[start:end])

    def on_field_data(data: bytes, start: int, end: int) -> None:
        value.extend(data[start:end])
        if len(value) > MAX_FIELD_BYTES:
            raise InvalidBody(f"a form field is over {MAX_FIELD_BYTES} bytes")

    def on_field_end() -> None:
        from urllib.parse import unquote_plus

        form.fields[unquote_plus(name.decode("latin-1"))] = unquote_plus(value.decode("latin-1"))
        name.clear()
        value.clear()

    parser = QuerystringParser(
        {
            "on_field_name": on_field_name,
            "on_field_data": on_field_data,
            "on_field_end": on_field_end,
        }
    )
    try:
        async for chunk in stream:
            parser.write(chunk)
        parser.finalize()
    except FormParserError as exc:
        raise InvalidBody(f"the form body cannot be read: {exc}") from None
    return form
