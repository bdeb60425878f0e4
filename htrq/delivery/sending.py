"""One webhook POST: to the addresses that were judged, within one deadline, reading little.

Three things a receiver (or whoever controls its DNS) must not be able to do:

- **Point the request elsewhere after the check.** The callback's host is resolved once, each
  address judged (:mod:`htrq.delivery.addresses`), and the connection goes to one of those
  addresses: the network backend given to httpcore ignores the host it is asked to connect
  to and dials the judged addresses, so a DNS answer that changes between the check and the
  connection (DNS rebinding) changes nothing. The URL keeps its host, so the ``Host`` header
  and the TLS server name (SNI, and the certificate's check) are the callback's own.
- **Hold a delivery.** httpcore's timeouts are per read: a receiver that answers one byte
  every few seconds never trips them. Here every connect, read and write gets only what is
  left of one deadline for the whole delivery, so the attempt ends at the deadline whatever
  the receiver does.
- **Flood the worker's memory.** Only the status line and headers matter. At most
  :data:`MAX_ANSWER_BYTES` of the body are read, then the connection is closed; and the
  stream refuses to read more than :data:`MAX_NETWORK_BYTES` off the socket in all (httpcore
  reads up to 64 KiB at a time, and accepts headers up to 100 KiB), so a 300 MB answer costs
  the worker a few hundred KB.

httpcore (httpx's transport layer, and a public API of its own) is used directly because its
network backend is the documented place to decide where a connection goes.
"""

from __future__ import annotations

import base64
import logging
import ssl
import time
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any
from urllib.parse import unquote, urlsplit

import httpcore
import httpx

from htrq.delivery.addresses import Target

log = logging.getLogger(__name__)

#: Bytes of an answer's body that are read before the connection is closed.
MAX_ANSWER_BYTES = 4096
#: Bytes read off the socket for one delivery, headers included, before it is given up.
MAX_NETWORK_BYTES = 256 * 1024

#: The codes a delivery's failure is stored and shown as, with the text the job resource
#: shows: short and fixed, so that the answer to a job's poll never carries what a receiver
#: (or an inner host behind a callback URL) said or how it failed in detail.
ERRORS = {
    "http_status": "the receiver answered with a status outside 2xx",
    "timeout": "no complete answer within the delivery deadline (HTRQ_WEBHOOK_TIMEOUT)",
    "unreachable": "the receiver could not be reached",
    "tls_failed": "the TLS handshake with the receiver failed",
    "bad_answer": "the receiver's answer was not valid HTTP, or too long",
    "not_allowed": "the callback URL resolves to an address webhooks may not reach",
    "failed": "the delivery failed",
}


@dataclass(frozen=True)
class Attempt:
    """What one POST came to."""

    status: int | None  #: the answer's HTTP status; None when there was no answer
    error: str | None  #: a key of :data:`ERRORS`; None for an answer in 2xx
    bytes_read: int  #: bytes read off the network, headers included
    detail: str = ""  #: what went wrong, for the worker's log only

    @property
    def ok(self) -> bool:
        return self.error is None


class _Budget:
    """One deadline and one byte allowance, shared by every operation of a delivery."""

    def __init__(self, seconds: float) -> None:
        self.deadline = time.monotonic() + seconds
        self.bytes_read = 0

    def left(self, timeout: float | None, expired: type[Exception]) -> float:
        remaining = self.deadline - time.monotonic()
        if remaining <= 0:
            raise expired("the delivery deadline passed")
        return remaining if timeout is None else min(timeout, remaining)


class _GuardedStream(httpcore.NetworkStream):
    """A connection whose every read and write ends by the delivery's deadline, and whose
    reads stop at the delivery's byte allowance."""

    def __init__(self, inner: httpcore.NetworkStream, budget: _Budget) -> None:
        self.inner, self.budget = inner, budget

    def read(self, max_bytes: int, timeout: float | None = None) -> bytes:
        room = MAX_NETWORK_BYTES - self.budget.bytes_read
        if room <= 0:
            raise httpcore.ReadError("the answer is longer than a webhook answer may be")
        data = self.inner.read(
            min(max_bytes, room), self.budget.left(timeout, httpcore.ReadTimeout)
        )
        self.budget.bytes_read += len(data)
        return data

    def write(self, buffer: bytes, timeout: float | None = None) -> None:
        self.inner.write(buffer, self.budget.left(timeout, httpcore.WriteTimeout))

    def close(self) -> None:
        self.inner.close()

    def start_tls(
        self,
        ssl_context: Any,
        server_hostname: str | None = None,
        timeout: float | None = None,
    ) -> httpcore.NetworkStream:
        wait = self.budget.left(timeout, httpcore.ConnectTimeout)
        return _GuardedStream(self.inner.start_tls(ssl_context, server_hostname, wait), self.budget)

    def get_extra_info(self, info: str) -> Any:
        return self.inner.get_extra_info(info)


class _PinnedBackend(httpcore.NetworkBackend):
    """Connects to the judged addresses of one host, in turn, and to nothing else."""

    def __init__(self, target: Target, budget: _Budget) -> None:
        self.target, self.budget = target, budget
        self.plain = httpcore.SyncBackend()

    def connect_tcp(
        self,
        host: str,
        port: int,
        timeout: float | None = None,
        local_address: str | None = None,
        socket_options: Iterable[Any] | None = None,
    ) -> httpcore.NetworkStream:
        if host.strip("[]") != self.target.host.strip("[]") or port != self.target.port:
            # Only the callback's own origin is dialled (no proxy, no redirect elsewhere).
            raise httpcore.ConnectError(f"refusing to connect to {host}:{port}")
        last: Exception = httpcore.ConnectError("no address to connect to")
        for address in self.target.addresses:
            try:
                stream = self.plain.connect_tcp(
                    str(address),
                    port,
                    timeout=self.budget.left(timeout, httpcore.ConnectTimeout),
                    local_address=local_address,
                    socket_options=socket_options,
                )
            except httpcore.ConnectError as exc:
                last = exc
                continue
            return _GuardedStream(stream, self.budget)
        raise last

    def connect_unix_socket(
        self, path: str, timeout: float | None = None, socket_options: Iterable[Any] | None = None
    ) -> httpcore.NetworkStream:
        raise httpcore.ConnectError("webhooks go over TCP only")

    def sleep(self, seconds: float) -> None:
        time.sleep(seconds)


def post(
    url: str, target: Target, body: bytes, headers: dict[str, str], *, seconds: float
) -> Attempt:
    """POST ``body`` to ``url`` at ``target``'s judged addresses, within ``seconds`` in all."""
    budget = _Budget(seconds)
    parts = urlsplit(url)
    sent = [(k.encode(), v.encode()) for k, v in headers.items()]
    if parts.username is not None:
        # As httpx did with credentials in the URL: HTTP Basic.
        pair = f"{unquote(parts.username)}:{unquote(parts.password or '')}".encode()
        sent.append((b"Authorization", b"Basic " + base64.b64encode(pair)))
    sent.append((b"Host", _ascii(_host_header(target, parts.scheme))))
    target_path = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
    request_url = httpcore.URL(
        scheme=parts.scheme.encode(),
        host=_ascii(target.host),
        port=target.port,
        target=target_path.encode(),
    )
    timeouts = {k: seconds for k in ("connect", "read", "write", "pool")}
    try:
        with (
            httpcore.ConnectionPool(
                ssl_context=httpx.create_ssl_context(),
                max_connections=1,
                retries=0,
                network_backend=_PinnedBackend(target, budget),
            ) as pool,
            pool.stream(
                "POST",
                request_url,
                headers=sent,
                content=body,
                extensions={"timeout": timeouts},
            ) as answer,
        ):
            # A little of the body, so that a small answer completes normally; then the
            # connection closes, whatever is left of it unread.
            taken = 0
            for chunk in answer.iter_stream():
                taken += len(chunk)
                if taken >= MAX_ANSWER_BYTES:
                    break
            status = answer.status
    except httpcore.TimeoutException as exc:
        return Attempt(None, "timeout", budget.bytes_read, _detail(exc))
    except httpcore.ConnectError as exc:
        error = "tls_failed" if _is_tls(exc) else "unreachable"
        return Attempt(None, error, budget.bytes_read, _detail(exc))
    except (httpcore.ProtocolError, httpcore.ReadError, httpcore.WriteError) as exc:
        return Attempt(None, "bad_answer", budget.bytes_read, _detail(exc))
    except (httpcore.NetworkError, OSError, ValueError) as exc:
        return Attempt(None, "unreachable", budget.bytes_read, _detail(exc))
    return Attempt(status, None if 200 <= status < 300 else "http_status", budget.bytes_read)


def _host_header(target: Target, scheme: str) -> str:
    host = f"[{target.host}]" if ":" in target.host else target.host
    default = 443 if scheme == "https" else 80
    return host if target.port == default else f"{host}:{target.port}"


def _ascii(host: str) -> bytes:
    """A host name as it goes on the wire: IDNA for a name that is not ASCII."""
    return host.encode("ascii") if host.isascii() else host.encode("idna")


def _is_tls(exc: BaseException) -> bool:
    seen: BaseException | None = exc
    while seen is not None:
        if isinstance(seen, ssl.SSLError | ssl.CertificateError):
            return True
        seen = seen.__cause__ or seen.__context__
    return "ssl" in str(exc).lower() or "certificate" in str(exc).lower()


def _detail(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}"[:300]
