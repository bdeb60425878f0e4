"""PDF pages rendered for the worker with a time limit, through :mod:`htrq.rendering`.

PDFium renders in C and cannot be interrupted from Python: a crafted page (deep pattern
nesting, huge vector paths) can render for as long as it likes, holding a worker and its
claimed pages. Each worker process therefore renders PDF pages in a helper process of its
own (the same door as the API's, :class:`htrq.rendering.PdfRenderer`, with one helper: a
worker process reads one page at a time); past ``seconds`` the helper is killed, the page
fails with ``too_slow``, and the next PDF page starts a new helper. Image files do not need
this: Pillow decodes them in bounded time once their size is checked.
"""

from __future__ import annotations

import atexit
import os

from PIL import Image

from htrq.errors import PageError
from htrq.rendering import PdfRenderer, RenderTimeout, RenderUnavailable

#: Seconds a page waits for the process's one helper: only a threaded pool ever waits, for
#: the page before it, whose own render is bounded by its time limit.
_WAIT_SECONDS = 3600.0

_renderer: PdfRenderer | None = None
_renderer_pid = 0


def _own() -> PdfRenderer:
    """This worker process's renderer (a fork gets its own, not its parent's helper)."""
    global _renderer, _renderer_pid
    if _renderer is None or _renderer_pid != os.getpid():
        _renderer = PdfRenderer(processes=1, seconds=30.0, wait=_WAIT_SECONDS)
        _renderer_pid = os.getpid()
    return _renderer


@atexit.register
def _close() -> None:
    # Its helper would end on its own when the pipe closes, but after this process's last
    # look at it: stopped and waited for here, nothing is left running or unreaped.
    if _renderer is not None and _renderer_pid == os.getpid():
        _renderer.close()


def render_pdf_limited(
    data: bytes, index: int, *, dpi: int, max_pixels: int, max_aspect: float, seconds: float
) -> Image.Image:
    """:func:`htrq.inputs.render_pdf_page` in the helper process, stopped after ``seconds``."""
    try:
        return _own().render(
            data, index, dpi=dpi, max_pixels=max_pixels, max_aspect=max_aspect, seconds=seconds
        )
    except RenderTimeout:
        raise PageError(
            "too_slow",
            f"PDF page {index} took more than {seconds:g} s to render; "
            "print it to a new PDF or upload it as an image",
        ) from None
    except RenderUnavailable:
        # The helper died on this page (a crash in PDFium, killed for memory).
        raise PageError("invalid_pdf", f"page {index} could not be rendered") from None


def helper_pid() -> int | None:
    """The render process's pid, if one runs (for tests)."""
    pids = _renderer.pids() if _renderer is not None else []
    return pids[0] if pids else None
