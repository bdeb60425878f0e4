"""An uploaded file on its way to storage: its name, where its bytes are, their digest.

The API spools each file of a request to disk as it arrives (Starlette does), so an upload
is a path; the CLI and tests hand bytes. Either way the bytes are hashed and copied in
chunks, never held in memory whole by the service.
"""

from __future__ import annotations

import functools
import hashlib
import io
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from htrq.inputs import Source

_CHUNK = 1024 * 1024


@dataclass(frozen=True)
class Upload:
    filename: str | None
    data: bytes | None = None  #: the bytes, for small uploads made in process
    path: Path | None = None  #: or a file holding them
    sha256: str | None = None  #: their digest, where the caller computed it while copying

    def __post_init__(self) -> None:
        if (self.data is None) == (self.path is None):
            raise ValueError("an upload has either data or a path")

    @property
    def source(self) -> Source:
        return self.data if self.data is not None else self._file

    def open(self) -> BinaryIO:
        return io.BytesIO(self.data) if self.data is not None else self._file.open("rb")

    @functools.cached_property
    def size(self) -> int:
        return len(self.data) if self.data is not None else self._file.stat().st_size

    @property
    def _file(self) -> Path:
        assert self.path is not None  # no data, so a path (__post_init__)
        return self.path

    @functools.cached_property
    def digest(self) -> str:
        """SHA-256 of the bytes: the storage key, and part of the job's fingerprint."""
        if self.sha256 is not None:
            return self.sha256
        if self.data is not None:
            return hashlib.sha256(self.data).hexdigest()
        h = hashlib.sha256()
        with self.open() as fh:
            while chunk := fh.read(_CHUNK):
                h.update(chunk)
        return h.hexdigest()
