"""What a real ``htrq api`` does with uploads it should not take, and with clients that
send too slowly: the key and the per-file limit are checked while the body streams, before
it has arrived, and a connection that trickles is closed.

Each test talks to the API over a raw socket, so that it sees how much of a body the server
took before it answered (a client library sends the whole body first)."""

from __future__ import annotations

import contextlib
import socket
import threading
import time
from pathlib import Path

import pytest

from htrq.settings import Settings
from tests.services import Processes, service_env

pytestmark = pytest.mark.slow

MiB = 1024 * 1024
CHUNK = 64 * 1024
#: What an upload sends in all; the server must answer long before.
BODY = 256 * MiB
#: More than the socket buffers of both ends can hold on loopback: a server that answers
#: before reading the body leaves the client unable to send this much.
BUFFERED = 48 * MiB


def _address(url: str) -> tuple[str, int]:
    host, port = url.removeprefix("http://").split(":")
    return host, int(port)


def _upload(url: str, headers: dict[str, str], body_start: bytes, total: int) -> tuple[int, bytes]:
    """Send a POST /v1/jobs of ``total`` bytes (``body_start`` then zeros) until the server
    stops taking it, reading its answer meanwhile (as curl does: once the server closes, a
    reset would throw away an answer read only afterwards); the bytes sent and the answer."""
    sock = socket.create_connection(_address(url))
    head = "POST /v1/jobs HTTP/1.1\r\nHost: htrq\r\n" + "".join(
        f"{k}: {v}\r\n" for k, v in {**headers, "Content-Length": str(total)}.items()
    )
    answer = bytearray()

    def read() -> None:
        with contextlib.suppress(OSError):
            while data := sock.recv(65536):
                answer.extend(data)

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    sock.sendall(head.encode() + b"\r\n")
    sent = 0
    chunk = body_start + bytes(CHUNK - len(body_start))
    sock.settimeout(60)
    try:
        while sent < total and not answer:
            piece = chunk[: total - sent]
            sock.sendall(piece)
            sent += len(piece)
            chunk = bytes(CHUNK)
    except OSError:
        pass  # the server closed the connection after answering
    reader.join(timeout=60)
    sock.close()
    return sent, bytes(answer)


def _status(answer: bytes) -> int:
    return int(answer.split(b" ", 2)[1])


@pytest.fixture
def spool(tmp_path: Path) -> Path:
    """The API's temporary directory (TMPDIR), where uploads are spooled."""
    path = tmp_path / "spool"
    path.mkdir()
    return path


def _api(processes: Processes, settings: Settings, spool: Path) -> str:
    env = service_env(settings)
    env["TMPDIR"] = str(spool)
    return processes.api(env)


def test_a_large_body_without_a_key_is_refused_before_it_is_read(
    processes: Processes, database_url: str, broker_url: str, tmp_path: Path, spool: Path
) -> None:
    """A 256 MiB multipart upload without a key is answered 401 and the connection closed
    after the first MiBs, not the whole body; nothing of it is spooled to disk."""
    settings = Settings(
        database_url=database_url, broker_url=broker_url, storage_dir=tmp_path / "blobs"
    )
    url = _api(processes, settings, spool)
    part = b'--xyz\r\nContent-Disposition: form-data; name="files"; filename="p.png"\r\n\r\n'
    sent, answer = _upload(url, {"Content-Type": "multipart/form-data; boundary=xyz"}, part, BODY)
    assert _status(answer) == 401, answer[:300]
    assert b'"unauthorized"' in answer
    assert sent < BUFFERED, f"the server took {sent / MiB:.0f} MiB of a body it refused"
    assert list(spool.rglob("*")) == []


def test_a_file_over_the_limit_is_refused_while_it_streams(
    processes: Processes, database_url: str, broker_url: str, tmp_path: Path, spool: Path
) -> None:
    """A 256 MiB file against a 1 MiB per-file limit is answered 413 too_large once its
    first MiB has passed, not after the whole body; its spooled part is removed."""
    settings = Settings(
        database_url=database_url,
        broker_url=broker_url,
        storage_dir=tmp_path / "blobs",
        auth="off",
        max_upload_bytes=MiB,
    )
    url = _api(processes, settings, spool)
    part = b'--xyz\r\nContent-Disposition: form-data; name="files"; filename="big.png"\r\n\r\n'
    sent, answer = _upload(url, {"Content-Type": "multipart/form-data; boundary=xyz"}, part, BODY)
    assert _status(answer) == 413, answer[:300]
    assert b'"too_large"' in answer and b"big.png" in answer
    assert sent < BUFFERED, f"the server took {sent / MiB:.0f} MiB of a file over 1 MiB"
    assert list(spool.rglob("*")) == []


def _drip(url: str, first: bytes, drip: bytes, most: int) -> tuple[int, bytes]:
    """Send ``first``, then one byte of ``drip`` a second, at most ``most`` of them, until the
    server closes; return the bytes dripped and what the server answered."""
    sock = socket.create_connection(_address(url))
    sock.sendall(first)
    sock.settimeout(1.0)
    answer, dripped = b"", 0
    try:
        for byte in drip[:most]:
            try:
                data = sock.recv(65536)
                if not data:
                    break
                answer += data
                break
            except TimeoutError:
                pass
            sock.sendall(bytes([byte]))
            dripped += 1
    except (BrokenPipeError, ConnectionResetError):
        pass
    sock.close()
    return dripped, answer


def test_clients_that_trickle_are_disconnected(
    processes: Processes, database_url: str, broker_url: str, tmp_path: Path, spool: Path
) -> None:
    """Headers sent a byte a second are cut off at HTRQ_API_HEADER_SECONDS with 408; a body
    sent a byte a second is cut off within one rate window; neither client is kept for the
    60 s it would take."""
    settings = Settings(
        database_url=database_url,
        broker_url=broker_url,
        storage_dir=tmp_path / "blobs",
        auth="off",
        api_header_seconds=3,
        api_body_min_rate=1024,
    )
    url = _api(processes, settings, spool)
    started = time.monotonic()
    dripped, answer = _drip(url, b"GET /healthz HTTP/1.1\r\n", b"X-Slow: " + b"a" * 100, 60)
    assert dripped < 60 and answer.startswith(b"HTTP/1.1 408"), (dripped, answer[:200])
    head = (
        b"POST /v1/jobs HTTP/1.1\r\nHost: htrq\r\nContent-Length: 1000\r\n"
        b"Content-Type: multipart/form-data; boundary=xyz\r\n\r\n"
    )
    dripped, _ = _drip(url, head, b"-" * 100, 60)
    assert dripped < 60, "a body trickling at a byte a second was kept"
    print(f"trickling clients cut off after {time.monotonic() - started:.0f} s in all")
