"""A folder (a model, a training checkpoint) stored as one blob: an uncompressed tar.

Weights do not compress; a tar keeps the folder's files together, so that a model is one
key in the store, written whole or not at all like any blob, and read back on any machine.
"""

from __future__ import annotations

import io
import tarfile
from pathlib import Path

from htrq.storage import BlobStore


def put_folder(storage: BlobStore, folder: Path) -> str:
    """Store the files of ``folder`` (not its subfolders' names above it); return the key."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for path in sorted(Path(folder).rglob("*")):
            if path.is_file():
                # Fixed metadata: the same files give the same bytes, so the same key.
                info = tar.gettarinfo(str(path), arcname=str(path.relative_to(folder)))
                info.mtime, info.uid, info.gid, info.uname, info.gname = 0, 0, 0, "", ""
                with path.open("rb") as fh:
                    tar.addfile(info, fh)
    return storage.put(buf.getvalue())


def get_folder(storage: BlobStore, key: str, dest: Path) -> Path:
    """Unpack the folder stored under ``key`` into ``dest`` (made if need be); raises
    ``BlobMissing`` where it is gone. Only regular files inside ``dest`` are written."""
    dest = Path(dest)
    dest.mkdir(parents=True, exist_ok=True)
    with tarfile.open(fileobj=io.BytesIO(storage.get(key)), mode="r") as tar:
        # The "data" filter refuses links, devices and paths that leave ``dest``.
        tar.extractall(dest, filter="data")
    return dest
