"""Blob store for uploaded bytes. Only keys travel through the database and the broker."""

from __future__ import annotations

import hashlib
import io
import os
import shutil
import tempfile
from pathlib import Path
from typing import BinaryIO, Protocol


class BlobMissing(LookupError):
    """No blob is stored under the key."""


class BlobStore(Protocol):
    def put(self, data: bytes) -> str:
        """Store ``data`` and return its key."""
        ...

    def put_from(self, key: str, source: BinaryIO) -> str:
        """Store what ``source`` holds under ``key`` (its SHA-256, computed by the caller
        while the bytes streamed in), copying in chunks; return the key."""
        ...

    def delete(self, key: str) -> None:
        """Remove the blob (nothing happens if there is none)."""
        ...

    def get(self, key: str) -> bytes:
        """Return the bytes stored under ``key`` or raise :class:`BlobMissing`."""
        ...


class DirectoryStore:
    """Content-addressed files in a local (or shared, e.g. NFS) directory.

    The key is the SHA-256 of the bytes, so a repeated upload is stored once and a write that
    races another writer of the same content is harmless. Files are written to a temporary
    name and renamed, so a reader never sees half a file.
    """

    def __init__(self, root: Path) -> None:
        self.root = Path(root)

    def _path(self, key: str) -> Path:
        if len(key) != 64 or not all(c in "0123456789abcdef" for c in key):
            raise BlobMissing(f"not a blob key: {key!r}")
        return self.root / key[:2] / key[2:4] / key

    def put(self, data: bytes) -> str:
        return self.put_from(hashlib.sha256(data).hexdigest(), io.BytesIO(data))

    def put_from(self, key: str, source: BinaryIO) -> str:
        path = self._path(key)
        if path.exists():
            return key
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".tmp-")
        try:
            with os.fdopen(fd, "wb") as f:
                shutil.copyfileobj(source, f, 1024 * 1024)
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
        return key

    def delete(self, key: str) -> None:
        self._path(key).unlink(missing_ok=True)

    def get(self, key: str) -> bytes:
        try:
            return self._path(key).read_bytes()
        except FileNotFoundError:
            raise BlobMissing(f"no blob {key}") from None
