"""PDF pages rendered in a helper process with a time limit.

PDFium renders in C and cannot be interrupted from Python: a crafted page (deep pattern
nesting, huge vector paths) can render for as long as it likes, holding a worker and its
claimed pages. Each worker process therefore renders PDF pages in a helper process of its
own (``python -m worker.recognition.render``, started on first use and kept), sending the
file and page over a pipe; past ``seconds`` the helper is killed, the page fails with
``too_slow``, and the next PDF page starts a new helper. A plain subprocess rather than
``multiprocessing``: Celery's prefork children are daemonic, and daemonic processes may not
have children of their own. Image files do not need this: Pillow decodes them in bounded
time once their size is checked.
"""

from __future__ import annotations

import os
import pickle
import select
import struct
import subprocess
import sys
import threading
from typing import IO, Any

from PIL import Image

from htrq.errors import PageError
from htrq.inputs import render_pdf_page

_HEADER = struct.Struct(">Q")


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


class _Helper:
    """The render process of this worker process (a fork gets its own)."""

    def __init__(self) -> None:
        self.proc: subprocess.Popen[bytes] | None = None
        self.pid = os.getpid()
        self.lock = threading.Lock()

    def render(self, request: tuple, seconds: float) -> Any:
        with self.lock:
            proc = self._running()
            assert proc.stdin is not None and proc.stdout is not None
            try:
                _send(proc.stdin, request)
                ready, _, _ = select.select([proc.stdout], [], [], seconds)
                if not ready:
                    self._stop()
                    return None
                return _receive(proc.stdout)
            except (OSError, EOFError):
                self._stop()  # it died (killed for memory, crashed in PDFium)
                raise
            except BaseException:
                self._stop()  # interrupted mid-exchange (a time limit): the pipe is unusable
                raise

    def _running(self) -> subprocess.Popen[bytes]:
        if self.proc is None or self.proc.poll() is not None:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "worker.recognition.render"],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
            )
        return self.proc

    def _stop(self) -> None:
        if self.proc is not None:
            self.proc.kill()
            self.proc.wait()
            self.proc = None


_helper: _Helper | None = None


def render_pdf_limited(
    data: bytes, index: int, *, dpi: int, max_pixels: int, max_aspect: float, seconds: float
) -> Image.Image:
    """:func:`htrq.inputs.render_pdf_page` in the helper process, stopped after ``seconds``."""
    global _helper
    if _helper is None or _helper.pid != os.getpid():
        _helper = _Helper()
    try:
        outcome = _helper.render((data, index, dpi, max_pixels, max_aspect), seconds)
    except (OSError, EOFError):
        raise PageError("invalid_pdf", f"page {index} could not be rendered") from None
    if outcome is None:
        raise PageError(
            "too_slow",
            f"PDF page {index} took more than {seconds:g} s to render; "
            "print it to a new PDF or upload it as an image",
        )
    if isinstance(outcome, PageError):
        raise outcome
    mode, size, pixels = outcome
    return Image.frombytes(mode, size, pixels)


def helper_pid() -> int | None:
    """The render process's pid, if one runs (for tests)."""
    return _helper.proc.pid if _helper and _helper.proc and _helper.proc.poll() is None else None


def _serve() -> None:
    """The helper's loop: one request in, one answer out, until the worker closes the pipe."""
    stdin, stdout = sys.stdin.buffer, sys.stdout.buffer
    while True:
        try:
            data, index, dpi, max_pixels, max_aspect = _receive(stdin)
        except EOFError:
            return
        try:
            im = render_pdf_page(data, index, dpi=dpi, max_pixels=max_pixels, max_aspect=max_aspect)
            answer: Any = (im.mode, im.size, im.tobytes())
        except PageError as exc:
            answer = exc
        _send(stdout, answer)


if __name__ == "__main__":
    _serve()
