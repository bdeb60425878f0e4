"""Both blob stores behave alike: the directory one and the S3 one on a real S3 server."""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from pathlib import Path

import pytest

from htrq.settings import Settings
from htrq.storage import BlobMissing, BlobStore, S3Store, StorageUnavailable, open_store
from tests.conftest import S3_CREDENTIALS, S3Server
from tests.services import free_port

#: A store and what it holds, looked at from outside the store's code.
Backend = tuple[BlobStore, Callable[[], list[bytes]]]


@pytest.fixture(params=["file", pytest.param("s3", marks=pytest.mark.slow)])  # moto: a process
def backend(request: pytest.FixtureRequest, tmp_path: Path) -> Backend:
    if request.param == "file":
        root = tmp_path / "blobs"
        store = open_store(Settings(storage_url=f"file://{root}"))
        return store, lambda: [p.read_bytes() for p in root.rglob("*") if p.is_file()]
    url = request.getfixturevalue("s3_url")
    server: S3Server = request.getfixturevalue("s3_server")
    store = open_store(Settings(storage_url=url, s3_endpoint_url=server.endpoint_url))
    prefix = url.split("/", 3)[3] + "/"
    return store, lambda: list(server.objects(prefix).values())


def test_put_then_get_returns_the_bytes_under_a_content_key(backend: Backend) -> None:
    """Blobs round-trip under their SHA-256, and equal content is stored once."""
    store, stored = backend
    key = store.put(b"page bytes")
    assert key == hashlib.sha256(b"page bytes").hexdigest()
    assert store.put(b"page bytes") == key
    assert store.get(key) == b"page bytes"
    assert stored() == [b"page bytes"]


def test_missing_or_malformed_keys_raise_blob_missing(backend: Backend) -> None:
    """Unknown keys and path-like keys are refused, never read outside the store."""
    store, _ = backend
    with pytest.raises(BlobMissing):
        store.get("0" * 64)
    with pytest.raises(BlobMissing):
        store.get("../../etc/passwd")


def test_delete_removes_one_blob_and_may_be_repeated(backend: Backend) -> None:
    """delete() removes its blob alone; deleting it again, or a key never stored, is fine."""
    store, stored = backend
    a, b = store.put(b"a"), store.put(b"b")
    store.delete(a)
    with pytest.raises(BlobMissing):
        store.get(a)
    assert store.get(b) == b"b" and stored() == [b"b"]
    store.delete(a)
    store.delete("f" * 64)
    store.delete("../b")
    assert store.put(b"a") == a and store.get(a) == b"a"  # stored again after a delete


def test_a_path_like_key_deletes_nothing_outside_the_directory(tmp_path: Path) -> None:
    """delete() refuses to follow a key that is a path out of the store."""
    outside = tmp_path / "keep.txt"
    outside.write_bytes(b"keep")
    store = open_store(Settings(storage_url=f"file://{tmp_path}/blobs"))
    store.delete("../keep.txt")
    store.delete(str(outside))
    assert outside.read_bytes() == b"keep"


def test_s3_objects_are_named_prefix_and_two_levels_of_the_key(
    s3_url: str, s3_server: S3Server
) -> None:
    """An S3 blob is stored as <prefix>/<k[:2]>/<k[2:4]>/<k>, holding exactly the bytes."""
    store = open_store(Settings(storage_url=s3_url + "/", s3_endpoint_url=s3_server.endpoint_url))
    key = store.put(b"\x00scan\xff")
    prefix = s3_url.split("/", 3)[3]
    assert s3_server.objects(prefix) == {f"{prefix}/{key[:2]}/{key[2:4]}/{key}": b"\x00scan\xff"}


def test_an_unreachable_s3_store_is_unavailable_and_says_no_more(
    s3_url: str, s3_server: S3Server
) -> None:
    """A store that does not answer raises StorageUnavailable (not BlobMissing); the message
    names neither the endpoint nor the bucket nor a credential."""
    port = free_port()
    store = S3Store("private-bucket", "secret/prefix", endpoint_url=f"http://127.0.0.1:{port}")
    for call in (lambda: store.put(b"x"), lambda: store.get("0" * 64)):
        with pytest.raises(StorageUnavailable) as err:
            call()
        message = str(err.value)
        assert "could not be used" in message
        for secret in (str(port), "127.0.0.1", "private-bucket", "secret/"):
            assert secret not in message
        assert not any(v in message for v in S3_CREDENTIALS.values())


def test_a_bucket_that_does_not_exist_is_unavailable_not_missing(
    s3_url: str, s3_server: S3Server
) -> None:
    """A wrong bucket name is a configuration error to retry, never a blob gone for good."""
    store = S3Store("no-such-bucket", endpoint_url=s3_server.endpoint_url)
    with pytest.raises(StorageUnavailable, match="NoSuchBucket") as err:
        store.get("0" * 64)
    assert "no-such-bucket" not in str(err.value)


def test_an_unwritable_directory_is_unavailable_and_names_no_path(tmp_path: Path) -> None:
    """A directory store that cannot write raises StorageUnavailable without its path."""
    root = tmp_path / "not-a-dir"
    root.write_bytes(b"")
    store = open_store(Settings(storage_url=f"file://{root}"))
    with pytest.raises(StorageUnavailable) as err:
        store.put(b"x")
    assert str(tmp_path) not in str(err.value)
