"""The one door to PDFium: PDF pages are rendered, and PDFs opened, in helper processes.

PDFium is not thread-safe. The API serves its routes on a thread pool, and two threads in
PDFium at once crash the whole process (a general protection fault in ``libpdfium.so``: 16
concurrent PDF exports were enough), taking every tenant's requests with it. PDFium also
renders in one C call that cannot be interrupted, so a crafted page can hold a thread for as
long as it likes. So no PDFium call runs in a thread that serves anything: every caller (page
images, exports, the inspection at submit, the worker) goes through a :class:`PdfRenderer`,
which sends the file and the page over a pipe to one of at most ``processes`` helper
processes (``python -m htrq.rendering``), each of which does one thing at a time. A caller
waits at most ``wait`` seconds for a free helper (:class:`RenderBusy`), and a helper gets
``seconds`` for its answer; past that it is killed (:class:`RenderTimeout`), as is one that
died (:class:`RenderCrashed`), and the next caller starts a new one. Image files do not come
here: Pillow is thread-safe and decodes in bounded time once the header is checked.

Why not ``concurrent.futures.ProcessPoolExecutor``: it cannot stop one task that runs too
long (only the whole pool, and with it every other caller's render), and one child that dies
marks the whole pool broken, failing every render in flight, of every tenant. Here a helper
that runs out of time or dies is killed alone and only its caller gets an error. Plain
subprocesses rather than ``multiprocessing``, as ``worker.recognition.render`` found:
Celery's prefork children are daemonic, and daemonic processes may not have children of
their own.

Each process has its own renderers (:func:`pdf_renderer`): a fork (a worker's pool process)
starts its own helpers rather than share the parent's pipes.
"""

from __future__ import annotations

import atexit
import contextlib
import math
import os
import pickle
import select
import signal
import struct
import subprocess
import sys
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

from PIL import Image

from htrq.errors import PageError
from htrq.inputs import (
    DEFAULT_MAX_ASPECT,
    DEFAULT_MAX_PIXELS,
    Source,
    UploadInfo,
    inspect_upload,
    is_pdf,
    render_page,
)
from htrq.settings import Settings

_HEADER = struct.Struct(">Q")
#: Retry-After, in seconds, when a helper died: a new one starts at once, but a file that
#: crashes PDFium crashes it again, so a client should not hammer it.
CRASH_RETRY_AFTER = 5


class RenderUnavailable(Exception):
    """No rendering could be had for this request; the API answers 503 with Retry-After.

    ``code`` says why (``render_busy``, ``render_too_slow``, ``render_failed``);
    ``retry_after``: seconds after which the same request may succeed.
    """

    code = "render_unavailable"

    def __init__(self, message: str, *, retry_after: int) -> None:
        super().__init__(message)
        self.message = message
        self.retry_after = retry_after


class RenderBusy(RenderUnavailable):
    """Every helper stayed busy for as long as a caller may wait."""

    code = "render_busy"


class RenderTimeout(RenderUnavailable):
    """The helper did not answer within its time; it was killed."""

    code = "render_too_slow"


class RenderCrashed(RenderUnavailable):
    """The helper died before it answered (a crash in PDFium, killed for memory)."""

    code = "render_failed"


@dataclass(frozen=True)
class _Render:
    data: bytes
    frame: int
    dpi: int
    max_pixels: int
    max_aspect: float
    grey: bool = True


@dataclass(frozen=True)
class _Inspect:
    source: Source  # a Path: the helper reads the spooled upload itself, not through the pipe
    max_pages: int
    max_pixels: int | None
    max_aspect: float
    dpi: int | None = None


class _Helper:
    """One helper process and its pipes; used by one caller at a time."""

    def __init__(self) -> None:
        # In the caller's process group, so that stopping the group (a supervisor, the
        # tests) stops the helpers too, even one deep in a hostile page; it ends on its own
        # when its caller's process exits and the pipe closes.
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "htrq.rendering"],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
        )

    def alive(self) -> bool:
        return self.proc.poll() is None

    def call(self, request: _Render | _Inspect, seconds: float) -> Any:
        """The helper's answer, or None past ``seconds``; EOFError/OSError if it died."""
        assert self.proc.stdin is not None and self.proc.stdout is not None
        _send(self.proc.stdin, request)
        # poll, not select: the API's descriptors run past select's limit of 1024 under load.
        poller = select.poll()
        poller.register(self.proc.stdout, select.POLLIN)
        if not poller.poll(max(0, math.ceil(seconds * 1000))):
            return None
        return _receive(self.proc.stdout)

    def kill(self) -> None:
        with contextlib.suppress(OSError):
            self.proc.kill()
        self.proc.wait()
        for stream in (self.proc.stdin, self.proc.stdout):
            with contextlib.suppress(OSError):
                if stream is not None:
                    stream.close()


class PdfRenderer:
    """Renders PDF pages and inspects PDFs in at most ``processes`` helper processes.

    Thread-safe: any number of threads may call it; at most ``processes`` of them are served
    at once, the others wait (at most ``wait`` seconds). Image files are decoded in the
    calling thread, as :mod:`htrq.inputs` does.
    """

    def __init__(self, *, processes: int, seconds: float, wait: float | None = None) -> None:
        self.processes = processes
        #: Seconds a helper may take to answer one request.
        self.seconds = seconds
        #: Seconds a caller waits for a free helper.
        self.wait = seconds if wait is None else wait
        self._slots = threading.BoundedSemaphore(processes)
        self._idle: list[_Helper] = []
        self._lock = threading.Lock()

    def render(
        self,
        data: bytes,
        frame: int = 0,
        *,
        dpi: int = 300,
        max_pixels: int = DEFAULT_MAX_PIXELS,
        max_aspect: float = DEFAULT_MAX_ASPECT,
        seconds: float | None = None,
        grey: bool = True,
    ) -> Image.Image:
        """:func:`htrq.inputs.render_page`, with PDF pages rendered in a helper.

        Raises ``PageError`` as it does, and :class:`RenderUnavailable` when no helper
        answered (busy, out of time, died).
        """
        if not data or not is_pdf(data):
            return render_page(
                data, frame, dpi=dpi, max_pixels=max_pixels, max_aspect=max_aspect, grey=grey
            )
        outcome = self._call(_Render(data, frame, dpi, max_pixels, max_aspect, grey), seconds)
        mode, size, pixels, info = outcome
        im = Image.frombytes(mode, size, pixels)
        im.info.update(info)
        return im

    def inspect(
        self,
        source: Source,
        *,
        max_pages: int = 500,
        max_pixels: int | None = None,
        max_aspect: float = DEFAULT_MAX_ASPECT,
        dpi: int | None = None,
    ) -> UploadInfo:
        """:func:`htrq.inputs.inspect_upload`, with PDFs opened in a helper."""
        if not is_pdf(source):
            return inspect_upload(
                source, max_pages=max_pages, max_pixels=max_pixels, max_aspect=max_aspect
            )
        if isinstance(source, Path):
            source = source.resolve()
        request = _Inspect(source, max_pages, max_pixels, max_aspect, dpi)
        info: UploadInfo = self._call(request, None)
        return info

    def pids(self) -> list[int]:
        """The helpers that are running and idle (for tests)."""
        with self._lock:
            return [h.proc.pid for h in self._idle if h.alive()]

    def close(self) -> None:
        """Stop the idle helpers (one that is busy stops when its caller is done)."""
        with self._lock:
            idle, self._idle = self._idle, []
        for helper in idle:
            helper.kill()

    def _call(self, request: _Render | _Inspect, seconds: float | None) -> Any:
        seconds = self.seconds if seconds is None else seconds
        if not self._slots.acquire(timeout=self.wait):
            raise RenderBusy(
                f"every PDF renderer stayed busy for {self.wait:g} s; try again shortly",
                retry_after=_retry_after(self.wait),
            )
        helper: _Helper | None = None
        try:
            with self._lock:
                while self._idle and helper is None:
                    helper = self._idle.pop()
                    if not helper.alive():
                        helper.kill()
                        helper = None
            try:
                if helper is None:
                    helper = _Helper()
                outcome = helper.call(request, seconds)
            except (OSError, EOFError):
                raise RenderCrashed(
                    "the PDF renderer stopped while reading this file; try again later",
                    retry_after=CRASH_RETRY_AFTER,
                ) from None
            if outcome is None:
                raise RenderTimeout(
                    f"rendering took more than {seconds:g} s; try again later",
                    retry_after=_retry_after(seconds),
                )
            with self._lock:
                self._idle.append(helper)
            helper = None  # kept for the next caller
        finally:
            # Killed unless kept: out of time, died, or interrupted mid-exchange (a worker's
            # time limit), after which its pipe holds half a message.
            if helper is not None:
                helper.kill()
            self._slots.release()
        if isinstance(outcome, PageError):
            raise outcome
        return outcome


def _retry_after(seconds: float) -> int:
    return max(1, min(60, math.ceil(seconds)))


#: This process's renderers by configuration (:func:`pdf_renderer`), and the pid they
#: belong to: a forked child must not use its parent's helpers.
_renderers: dict[tuple[int, float], PdfRenderer] = {}
_renderers_pid = os.getpid()
_renderers_lock = threading.Lock()


def pdf_renderer(settings: Settings) -> PdfRenderer:
    """This process's renderer for ``settings`` (``HTRQ_PDF_RENDERERS`` helpers, each
    answer within ``HTRQ_PDF_RENDER_SECONDS``), made on first use.

    One per process rather than one per caller: the bound on helpers is the process's.
    """
    global _renderers_pid
    key = (settings.pdf_renderers, settings.pdf_render_seconds)
    with _renderers_lock:
        if _renderers_pid != os.getpid():
            _renderers.clear()  # the parent's; its pipes are its own
            _renderers_pid = os.getpid()
        renderer = _renderers.get(key)
        if renderer is None:
            renderer = PdfRenderer(processes=key[0], seconds=key[1])
            _renderers[key] = renderer
        return renderer


@atexit.register
def _close_all() -> None:
    if _renderers_pid == os.getpid():
        for renderer in list(_renderers.values()):
            renderer.close()


def _send(stream: IO[bytes], obj: Any) -> None:
    body = pickle.dumps(obj, protocol=pickle.HIGHEST_PROTOCOL)
    stream.write(_HEADER.pack(len(body)) + body)
    stream.flush()


def _receive(stream: IO[bytes]) -> Any:
    head = stream.read(_HEADER.size)
    if len(head) < _HEADER.size:
        raise EOFError("the render process closed its pipe")
    (size,) = _HEADER.unpack(head)
    body = stream.read(size)
    if len(body) < size:
        raise EOFError("the render process closed its pipe")
    # Our own child over our own pipe: nothing else can write to it.
    return pickle.loads(body)


def _answer(request: _Render | _Inspect) -> Any:
    try:
        if isinstance(request, _Inspect):
            return inspect_upload(
                request.source,
                max_pages=request.max_pages,
                max_pixels=request.max_pixels,
                max_aspect=request.max_aspect,
                dpi=request.dpi,
            )
        im = render_page(
            request.data,
            request.frame,
            dpi=request.dpi,
            max_pixels=request.max_pixels,
            max_aspect=request.max_aspect,
            grey=request.grey,
        )
        # Only plain values of ``info`` cross back (a PDF page has none of its own).
        info = {k: v for k, v in im.info.items() if isinstance(v, (int, float, str, tuple))}
        return (im.mode, im.size, im.tobytes(), info)
    except PageError as exc:
        return exc


def _serve() -> None:
    """The helper's loop: one request in, one answer out, until the caller closes the pipe."""
    # A terminal's Ctrl-C reaches the whole group: the API (or worker) shuts down and closes
    # the pipe, and the helper ends then, instead of failing the renders still in flight.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    stdin = sys.stdin.buffer
    # The answers go to a descriptor of their own; what PDFium or Python might print to
    # standard output goes to standard error instead of into the pipe.
    answers = os.fdopen(os.dup(sys.stdout.fileno()), "wb")
    os.dup2(sys.stderr.fileno(), sys.stdout.fileno())
    while True:
        try:
            request = _receive(stdin)
        except EOFError:
            return
        try:
            _send(answers, _answer(request))
        except BrokenPipeError:
            return  # the caller is gone


if __name__ == "__main__":
    # Run the module's own copy, not ``__main__``'s: the requests are unpickled as
    # ``htrq.rendering`` classes.
    from htrq.rendering import _serve as serve

    serve()
