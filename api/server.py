"""uvicorn's HTTP protocol with deadlines on what a client sends.

uvicorn times out an idle connection only between requests (``timeout_keep_alive``): a
connection that sends nothing, or a byte of its headers every few seconds, or an upload at a
byte every few seconds, holds a socket and a request for as long as the client likes. Here:

- the request line and headers must arrive within ``HTRQ_API_HEADER_SECONDS`` of the
  connection opening (or of the previous response): past it, 408 and the connection closes;
- a body must arrive at ``HTRQ_API_BODY_MIN_RATE`` bytes per second or faster, measured over
  windows of :data:`WINDOW` seconds during which the server was reading (a pause that the
  server itself asked for, while the app is busy with what it has, does not count): a slower
  window closes the connection.

A request the app is answering is not timed: the deadlines judge the client, not the work.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from htrq.settings import Settings, load_settings

#: Seconds over which a body's rate is measured.
WINDOW = 10.0
_TIMEOUT_BODY = (
    b'{"error":{"code":"request_timeout","message":"the request did not arrive in time"}}'
)
_REQUEST_TIMEOUT = (
    b"HTTP/1.1 408 Request Timeout\r\ncontent-type: application/json\r\n"
    b"connection: close\r\ncontent-length: " + str(len(_TIMEOUT_BODY)).encode() + b"\r\n\r\n"
) + _TIMEOUT_BODY


class GuardedHttpProtocol(HttpToolsProtocol):
    """:class:`HttpToolsProtocol` with the header deadline and the body rate above."""

    #: Set by :func:`configure` in this process (or read from the environment on first use:
    #: ``htrq api --workers N`` starts each server process afresh).
    settings: Settings | None = None

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        if GuardedHttpProtocol.settings is None:
            GuardedHttpProtocol.settings = load_settings()
        s = GuardedHttpProtocol.settings
        self.header_seconds, self.min_rate = s.api_header_seconds, s.api_body_min_rate
        self._guard: asyncio.TimerHandle | None = None
        self._stage = "idle"  # headers | body | app
        self._window_start = 0.0
        self._window_bytes = 0

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._await_headers()

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        super().connection_lost(exc)

    def on_message_begin(self) -> None:
        super().on_message_begin()
        if self._stage != "headers":
            self._await_headers()

    def on_headers_complete(self) -> None:
        super().on_headers_complete()
        self._disarm()
        self._stage = "body"
        if self.min_rate > 0:
            self._window_start, self._window_bytes = time.monotonic(), 0
            self._arm(WINDOW, self._check_rate)

    def on_body(self, body: bytes) -> None:
        super().on_body(body)
        self._window_bytes += len(body)

    def on_message_complete(self) -> None:
        super().on_message_complete()
        self._disarm()
        self._stage = "app"

    def on_response_complete(self) -> None:
        super().on_response_complete()
        if self._stage == "app":
            # The next request's headers (uvicorn's keep-alive timeout closes an idle one
            # sooner; this bounds one that trickles in).
            self._await_headers()

    def _await_headers(self) -> None:
        self._disarm()
        self._stage = "headers"
        self._arm(self.header_seconds, self._headers_late)

    def _headers_late(self) -> None:
        if self._stage == "headers" and not self.transport.is_closing():
            self.transport.write(_REQUEST_TIMEOUT)
            self.transport.close()

    def _check_rate(self) -> None:
        if self._stage != "body" or self.transport.is_closing():
            return
        now = time.monotonic()
        if self.flow.read_paused:
            # The server stopped reading (the app is behind): not the client's fault.
            self._window_start, self._window_bytes = now, 0
        elif self._window_bytes < self.min_rate * (now - self._window_start):
            self.transport.close()  # the app's receive() then sees the client go
            return
        else:
            self._window_start, self._window_bytes = now, 0
        self._arm(WINDOW, self._check_rate)

    def _arm(self, seconds: float, callback: Any) -> None:
        self._guard = self.loop.call_later(seconds, callback)

    def _disarm(self) -> None:
        if self._guard is not None:
            self._guard.cancel()
            self._guard = None


def configure(settings: Settings) -> None:
    """Use ``settings``' deadlines in this process (``htrq api`` with one process)."""
    GuardedHttpProtocol.settings = settings
