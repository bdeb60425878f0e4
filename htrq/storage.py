"""Blob store for uploaded bytes. Only keys travel through the database and the broker."""

from __future__ import annotations

import hashlib
import os
import tempfile
from pathlib import Path
from typing import Protocol


class BlobMissing(LookupError):
    """No blob is stored under the key."""


class BlobStore(Protocol):
    def put(self, data: bytes) -> str:
        """Store ``data`` and return its key."""
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
        key = hashlib.sha256(data).hexdigest()
        path = self._path(key)
        if path.exists():
            return key
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".tmp-")
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(data)
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
        return key

    def get(self, key: str) -> bytes:
        try:
            return self._path(key).read_bytes()
        except FileNotFoundError:
            raise BlobMissing(f"no blob {key} under {self.root}") from None
