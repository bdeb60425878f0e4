from __future__ import annotations

from pathlib import Path

import pytest

from htrq.storage import BlobMissing, DirectoryStore


def test_put_then_get_returns_the_bytes_under_a_content_key(tmp_path: Path) -> None:
    """Blobs round-trip, and equal content gets the same key once."""
    store = DirectoryStore(tmp_path)
    key = store.put(b"page bytes")
    assert store.put(b"page bytes") == key
    assert store.get(key) == b"page bytes"
    assert len([p for p in tmp_path.rglob("*") if p.is_file()]) == 1


def test_missing_or_malformed_keys_raise_blob_missing(tmp_path: Path) -> None:
    """Unknown keys and path-like keys are refused, never read outside the store."""
    store = DirectoryStore(tmp_path)
    with pytest.raises(BlobMissing):
        store.get("0" * 64)
    with pytest.raises(BlobMissing):
        store.get("../../etc/passwd")
