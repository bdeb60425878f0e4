"""Blob stores for uploaded bytes: a local directory or an S3-compatible bucket.

Only keys travel through the database and the broker. A key is the SHA-256 of the bytes (64
hex digits), so a repeated upload is stored once and two writers of the same content never
conflict. ``open_store`` picks the store from ``HTRQ_STORAGE_URL``; the rest of the code sees
only :class:`BlobStore`.
"""

from __future__ import annotations

import base64
import hashlib
import io
import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, BinaryIO, Protocol

from htrq.settings import Settings, parse_storage_url

#: Seconds to open a connection to the object store, and to wait for each read from it (a
#: read, not the whole transfer: a 50 MB upload may take longer).
S3_CONNECT_TIMEOUT = 5.0
S3_READ_TIMEOUT = 60.0
#: Attempts per request, "standard" mode: retries throttling, 5xx and connection errors with
#: jittered exponential backoff, so a store that blinks costs a second, not a page.
S3_MAX_ATTEMPTS = 3


class BlobMissing(LookupError):
    """No blob is stored under the key."""


class StorageUnavailable(Exception):
    """The store could not be reached or refused the request; trying again later may work.

    The message names no endpoint, bucket, path or credential (it may reach a client); the
    chained cause, for the logs, has the details.
    """


class BlobStore(Protocol):
    def put(self, data: bytes) -> str:
        """Store ``data`` and return its key."""
        ...

    def put_from(self, key: str, source: BinaryIO) -> str:
        """Store what ``source`` holds under ``key`` (its SHA-256, computed by the caller
        while the bytes streamed in), copying in chunks, never whole; return the key."""
        ...

    def get(self, key: str) -> bytes:
        """Return the bytes stored under ``key`` or raise :class:`BlobMissing`."""
        ...

    def delete(self, key: str) -> None:
        """Remove the blob under ``key``; a key with no blob is no error.

        Equal content shares one key: delete a key only when no page refers to it any more.
        """
        ...


def blob_key(data: bytes) -> str:
    """The key ``data`` is stored under."""
    return hashlib.sha256(data).hexdigest()


def is_blob_key(key: str) -> bool:
    """Whether ``key`` could be a key: anything else is refused before it reaches a path."""
    return len(key) == 64 and all(c in "0123456789abcdef" for c in key)


def _fanned_out(key: str) -> str:
    # Two levels of 256, so that no directory (or listing) holds millions of entries.
    return f"{key[:2]}/{key[2:4]}/{key}"


class DirectoryStore:
    """Content-addressed files in a local (or shared, e.g. NFS) directory.

    Files are written to a temporary name and renamed, so a reader never sees half a file.
    """

    def __init__(self, root: Path) -> None:
        self.root = Path(root)

    def _path(self, key: str) -> Path:
        if not is_blob_key(key):
            raise BlobMissing(f"not a blob key: {key[:80]!r}")
        return self.root / _fanned_out(key)

    def put(self, data: bytes) -> str:
        return self.put_from(blob_key(data), io.BytesIO(data))

    def put_from(self, key: str, source: BinaryIO) -> str:
        path = self._path(key)
        if path.exists():
            return key
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".tmp-")
        except OSError as exc:
            raise _directory_error("written", exc) from exc
        try:
            with os.fdopen(fd, "wb") as f:
                shutil.copyfileobj(source, f, 1024 * 1024)
            os.replace(tmp, path)
        except OSError as exc:
            Path(tmp).unlink(missing_ok=True)
            raise _directory_error("written", exc) from exc
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
        return key

    def get(self, key: str) -> bytes:
        try:
            return self._path(key).read_bytes()
        except FileNotFoundError:
            raise BlobMissing(f"no blob {key}") from None
        except OSError as exc:
            raise _directory_error("read", exc) from exc

    def delete(self, key: str) -> None:
        if not is_blob_key(key):
            return  # never stored, and never a path to follow
        try:
            # The emptied fan-out directories stay: a concurrent put may be writing into them.
            self._path(key).unlink(missing_ok=True)
        except OSError as exc:
            raise _directory_error("deleted from", exc) from exc


def _directory_error(verb: str, exc: OSError) -> StorageUnavailable:
    return StorageUnavailable(f"the blob directory could not be {verb} ({type(exc).__name__})")


class S3Store:
    """Content-addressed objects in an S3-compatible bucket (AWS S3, MinIO, Ceph RGW).

    A key is stored as ``<prefix>/<k[:2]>/<k[2:4]>/<k>``. A PUT is atomic, so a reader never
    sees half an object. Credentials come from boto3's standard chain (``AWS_ACCESS_KEY_ID``
    and ``AWS_SECRET_ACCESS_KEY``, ``AWS_PROFILE``, an instance or pod role, ...).
    """

    def __init__(self, bucket: str, prefix: str = "", *, endpoint_url: str | None = None) -> None:
        # boto3: AWS's own, well-kept client, which S3-compatible stores are checked with
        # (Ceph's s3-tests suite is written in it). Imported here, so that a process on a
        # directory store does not pay for loading it.
        import boto3
        from botocore.config import Config

        self.bucket = bucket
        self.prefix = prefix.strip("/")
        config = Config(
            connect_timeout=S3_CONNECT_TIMEOUT,
            read_timeout=S3_READ_TIMEOUT,
            retries={"mode": "standard", "max_attempts": S3_MAX_ATTEMPTS},
            # boto3 >= 1.36 adds CRC checksum headers that several S3-compatible stores reject
            # (boto/boto3#4392); put() sends Content-MD5 instead, which they check.
            request_checksum_calculation="when_required",
            response_checksum_validation="when_required",
        )
        # A session of its own: boto3's default session is not thread-safe; the client is.
        self._client = boto3.session.Session().client(
            "s3", endpoint_url=endpoint_url, config=config
        )

    def object_name(self, key: str) -> str:
        """The object the blob under ``key`` is stored as."""
        if not is_blob_key(key):
            raise BlobMissing(f"not a blob key: {key[:80]!r}")
        return f"{self.prefix}/{_fanned_out(key)}" if self.prefix else _fanned_out(key)

    def put(self, data: bytes) -> str:
        key = blob_key(data)
        name = self.object_name(key)
        with _s3_errors():
            # A repeated upload costs a HEAD instead of sending the bytes again.
            if self._exists(name):
                return key
            md5 = hashlib.md5(data, usedforsecurity=False).digest()
            self._client.put_object(
                Bucket=self.bucket,
                Key=name,
                Body=data,
                ContentMD5=base64.b64encode(md5).decode(),
                ContentType="application/octet-stream",
            )
        return key

    def put_from(self, key: str, source: BinaryIO) -> str:
        name = self.object_name(key)
        with _s3_errors():
            if self._exists(name):
                return key
            # A managed transfer: parts of 8 MB, so a large upload is never held whole.
            self._client.upload_fileobj(
                source,
                self.bucket,
                name,
                ExtraArgs={"ContentType": "application/octet-stream"},
            )
        return key

    def get(self, key: str) -> bytes:
        name = self.object_name(key)
        with _s3_errors(missing=key):
            response = self._client.get_object(Bucket=self.bucket, Key=name)
            return response["Body"].read()

    def delete(self, key: str) -> None:
        if not is_blob_key(key):
            return
        with _s3_errors(missing=key):
            # S3 answers 204 for a key that is not there.
            self._client.delete_object(Bucket=self.bucket, Key=self.object_name(key))

    def _exists(self, name: str) -> bool:
        from botocore.exceptions import ClientError

        try:
            self._client.head_object(Bucket=self.bucket, Key=name)
        except ClientError as exc:
            if _is_not_found(exc):
                return False
            raise
        return True


def _is_not_found(exc: Any) -> bool:
    return exc.response.get("Error", {}).get("Code") in {"404", "NoSuchKey", "NotFound"}


@contextmanager
def _s3_errors(missing: str | None = None) -> Iterator[None]:
    """Turn botocore's errors into :class:`BlobMissing` (a missing ``missing`` key) and
    :class:`StorageUnavailable`.

    botocore's messages hold the endpoint URL and the object's name; these say only what
    happened (``EndpointConnectionError``, ``AccessDenied``, ...).
    """
    from botocore.exceptions import BotoCoreError, ClientError

    try:
        yield
    except ClientError as exc:
        if missing is not None and _is_not_found(exc):
            raise BlobMissing(f"no blob {missing}") from None
        code = exc.response.get("Error", {}).get("Code", "unknown")
        raise StorageUnavailable(f"the object store refused the request ({code})") from exc
    except BotoCoreError as exc:
        name = type(exc).__name__
        raise StorageUnavailable(f"the object store could not be used ({name})") from exc


def open_store(settings: Settings) -> BlobStore:
    """The store ``settings`` name: ``HTRQ_STORAGE_URL``, else the directory
    ``HTRQ_STORAGE_DIR``."""
    if settings.storage_url is None:
        return DirectoryStore(settings.storage_dir)
    where = parse_storage_url(settings.storage_url)
    if where.scheme == "file":
        assert where.path is not None
        return DirectoryStore(where.path)
    return S3Store(where.bucket, where.prefix, endpoint_url=settings.s3_endpoint_url)
