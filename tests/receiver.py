"""Real HTTP receivers for webhooks, each on a port of its own: one that refuses the first
requests it is told to, then accepts, and keeps everything it was sent; and three that
misbehave (answer a byte at a time, answer a huge body, hold the connection)."""

from __future__ import annotations

import contextlib
import select
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Self


@dataclass
class Received:
    body: bytes
    headers: dict[str, str]
    answered: int


@dataclass
class Receiver:
    refuse_first: int = 0  #: answer 500 to this many requests before answering 204
    requests: list[Received] = field(default_factory=list)

    def __post_init__(self) -> None:
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                with receiver.lock:
                    status = 500 if len(receiver.requests) < receiver.refuse_first else 204
                    receiver.requests.append(Received(body, dict(self.headers), status))
                self.send_response(status)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args: object) -> None:
                pass

        self.lock = threading.Lock()
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}/hooks/htrq"

    def accepted(self) -> list[Received]:
        with self.lock:
            return [r for r in self.requests if 200 <= r.answered < 300]

    def __enter__(self) -> Receiver:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.shutdown()
        self.server.server_close()


class _RawServer:
    """A TCP server that answers each connection with ``answer(conn)`` in a thread of its
    own, for receivers that misbehave below HTTP (drip, flood)."""

    def __init__(self, answer: Callable[[socket.socket], None]) -> None:
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.answer = answer
        self.threads: list[threading.Thread] = []
        self.closing = threading.Event()
        self.acceptor = threading.Thread(target=self._accept, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.sock.getsockname()[1]}/hooks/htrq"

    def _accept(self) -> None:
        while not self.closing.is_set():
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            t = threading.Thread(target=self._serve, args=(conn,), daemon=True)
            self.threads.append(t)
            t.start()

    def _serve(self, conn: socket.socket) -> None:
        with conn:
            _read_request(conn)
            # OSError: the client closed the connection, which is what these receivers wait for.
            with contextlib.suppress(OSError):
                self.answer(conn)

    def start(self) -> None:
        self.acceptor.start()

    def close(self) -> None:
        self.closing.set()
        self.sock.close()
        for t in self.threads:
            t.join(timeout=30)


class _RawReceiver:
    """A receiver over a :class:`_RawServer` (``self.server``), used as a context manager."""

    server: _RawServer

    @property
    def url(self) -> str:
        return self.server.url

    def __enter__(self) -> Self:
        self.server.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.close()


def _read_request(conn: socket.socket) -> bytes:
    """The request's head and body (by its Content-Length)."""
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = conn.recv(65536)
        if not chunk:
            return data
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    length = 0
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            length = int(value.strip())
    while len(body) < length:
        chunk = conn.recv(65536)
        if not chunk:
            break
        body += chunk
    return head + b"\r\n\r\n" + body


@dataclass
class DripReceiver(_RawReceiver):
    """Answers a byte at a time, ``interval`` seconds apart: a status line and then a header
    ``size`` bytes long, never reaching the end of the headers until it has sent them all.
    ``sent`` counts the bytes each connection got out before the client hung up (or all)."""

    interval: float = 0.1
    size: int = 200
    sent: list[int] = field(default_factory=list)
    requests: list[bytes] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.done = threading.Event()
        self.server = _RawServer(self._answer)

    def _answer(self, conn: socket.socket) -> None:
        answer = (
            b"HTTP/1.1 200 OK\r\nX-Drip: " + b"d" * self.size + b"\r\nContent-Length: 0\r\n\r\n"
        )
        count = 0
        try:
            for byte in answer:
                conn.sendall(bytes([byte]))
                count += 1
                time.sleep(self.interval)
                if _closed(conn):
                    break
        finally:
            self.sent.append(count)
            self.done.set()


@dataclass
class FloodReceiver(_RawReceiver):
    """Answers 200 with a body of ``size`` bytes, written as fast as the client takes them;
    ``sent`` counts the bytes each connection got out before the client hung up."""

    size: int = 300 * 1024 * 1024
    sent: list[int] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.done = threading.Event()
        self.server = _RawServer(self._answer)

    def _answer(self, conn: socket.socket) -> None:
        block = b"\0" * (1024 * 1024)
        count = 0
        try:
            conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % self.size)
            while count < self.size:
                count += conn.send(block[: self.size - count])
        finally:
            self.sent.append(count)
            self.done.set()


@dataclass
class HoldingReceiver(_RawReceiver):
    """Takes a request and answers nothing until ``release`` is set (or ``hold`` seconds
    pass), then 204; ``holding`` counts the connections it holds now, ``most`` the most it
    held at once."""

    hold: float = 60.0
    requests: list[bytes] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.release = threading.Event()
        self.lock = threading.Lock()
        self.holding = self.most = 0
        self.server = _RawServer(self._answer)

    def _answer(self, conn: socket.socket) -> None:
        with self.lock:
            self.holding += 1
            self.most = max(self.most, self.holding)
        try:
            self.release.wait(self.hold)
            conn.sendall(b"HTTP/1.1 204 No Content\r\nContent-Length: 0\r\n\r\n")
        finally:
            with self.lock:
                self.holding -= 1

    def __exit__(self, *exc: object) -> None:
        self.release.set()
        super().__exit__(*exc)


def _closed(conn: socket.socket) -> bool:
    """Whether the client has closed its end (a read that would not block finds EOF)."""
    readable, _, _ = select.select([conn], [], [], 0)
    if not readable:
        return False
    try:
        return conn.recv(1, socket.MSG_PEEK) == b""
    except OSError:
        return True
