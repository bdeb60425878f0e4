"""What an uploaded file holds: its format and how many pages it becomes.

The API calls :func:`inspect_upload` to split one upload into page rows (cheap: headers only,
no pixel is decoded); the worker calls :func:`render_page` to turn one stored file plus a frame
index into a page image. PDF pages are rendered with pypdfium2, image files with Pillow; each
frame of a multi-frame TIFF is a page. No torch here.
"""

from __future__ import annotations

import contextlib
import io
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import pypdfium2 as pdfium
from PIL import Image

from htrq.errors import PageError, public_message

#: Formats accepted for upload, by the name Pillow (or ``PDF``) gives them.
IMAGE_FORMATS = {"PNG", "JPEG", "TIFF", "WEBP", "BMP"}

#: Default pixel bound for one page (about A3 at 600 DPI). The worker passes its setting.
DEFAULT_MAX_PIXELS = 100_000_000
#: Default bound on a page's long side over its short side (the settings' ``max_aspect``).
DEFAULT_MAX_ASPECT = 100.0

#: PDFium's FPDF_ERR_PASSWORD: the document is encrypted and no (right) password was given.
_PDF_ERR_PASSWORD = 4


@dataclass(frozen=True)
class UploadInfo:
    format: str  #: ``PNG``, ``JPEG``, ``TIFF``, ``WEBP``, ``BMP`` or ``PDF``
    pages: int  #: how many page rows the file becomes
    #: PDF pages refused from their size alone, by index: each fails alone at submit, and
    #: the file's other pages are read.
    refused: tuple[tuple[int, PageError], ...] = ()


#: What :func:`inspect_upload` reads: the bytes, or a file holding them (an upload spooled
#: to disk, so that a large one is never held in memory whole).
Source = bytes | Path


def is_pdf(data: Source) -> bool:
    # The spec lets the header start anywhere in the first 1024 bytes.
    if isinstance(data, Path):
        with data.open("rb") as fh:
            data = fh.read(1024)
    return b"%PDF-" in data[:1024]


def inspect_upload(
    data: Source,
    *,
    max_pages: int = 500,
    max_pixels: int | None = None,
    max_aspect: float = DEFAULT_MAX_ASPECT,
    dpi: int | None = None,
) -> UploadInfo:
    """Identify ``data`` and count its pages, or raise :class:`PageError`.

    With ``max_pixels`` an image whose (first) page is over the bound is refused here, from
    its header, as is one whose shape is beyond ``max_aspect``; with ``dpi`` too, a PDF page
    that would be over them rendered at that resolution (the worker's) is listed in
    ``refused``, from the page sizes alone (a PDF all of whose pages are is refused whole,
    with the first page's reason). TIFF frames are counted no further than ``max_pages`` (a file of
    80,000 tiny frames is refused after 501 of them).
    """
    if (data.stat().st_size if isinstance(data, Path) else len(data)) == 0:
        raise PageError("empty_file", "the uploaded file is empty")
    refused: tuple[tuple[int, PageError], ...] = ()
    if is_pdf(data):
        with _open_pdf(data) as pdf:
            pages = len(pdf)
            if dpi is not None and max_pixels is not None and pages <= max_pages:
                refused = _check_pdf_pages(pdf, pages, dpi, max_pixels, max_aspect)
                if refused and len(refused) == pages:
                    raise refused[0][1]
        fmt = "PDF"
    else:
        with _open_image(data) as im:
            fmt = im.format or ""
            if fmt not in IMAGE_FORMATS:
                raise PageError("unsupported_format", f"{fmt or 'unknown'} files are not accepted")
            _check_not_empty(im.size, 0)
            check_aspect(im.size, max_aspect)
            if max_pixels is not None:
                check_pixels(im.size, max_pixels)
            # Only TIFF frames are pages; an animated WebP is one picture, read its first frame.
            pages = _count_frames(im, max_pages) if fmt == "TIFF" else 1
    if pages > max_pages:
        raise PageError(
            "too_many_pages",
            f"the file has {pages} pages, over the limit of {max_pages}; split it into parts",
        )
    return UploadInfo(format=fmt, pages=pages, refused=refused)


def render_page(
    data: bytes,
    frame: int = 0,
    *,
    dpi: int = 300,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    max_aspect: float = DEFAULT_MAX_ASPECT,
    grey: bool = True,
) -> Image.Image:
    """Return page ``frame`` of a stored upload as a decoded PIL image (not yet normalised).

    A PDF page is rendered in grey for reading (``grey``: the recognizer reads grey, and it
    is a third of the pixels) and in colour for people (``grey=False``: the page image, the
    review page, the searchable PDF). Image files keep their own mode either way.

    The format, shape and pixel count are checked from the header (or the PDF page size at
    ``dpi``) before any pixel is decoded, so a decompression bomb is refused with
    ``too_large`` at no cost, and a format refused at upload is refused here too (a retry
    re-reads the stored bytes). PDF pages are rendered here without a time limit: the
    worker renders them through ``worker.recognition.render``, which has one.
    """
    if not data:  # as at upload: a retried page that was refused there keeps its code
        raise PageError("empty_file", "the uploaded file is empty")
    if is_pdf(data):
        return render_pdf_page(
            data, frame, dpi=dpi, max_pixels=max_pixels, max_aspect=max_aspect, grey=grey
        )
    with _open_image(data) as im:
        if (im.format or "") not in IMAGE_FORMATS:
            raise PageError(
                "unsupported_format", f"{im.format or 'unknown'} files are not accepted"
            )
        try:
            im.seek(frame)
        except (EOFError, ValueError) as exc:
            raise PageError("invalid_image", f"the file has no page {frame}") from exc
        _check_not_empty(im.size, frame)
        check_aspect(im.size, max_aspect)
        check_pixels(im.size, max_pixels)
        try:
            im.load()
        except Exception as exc:  # truncated or corrupt pixel data; Pillow raises many types
            raise PageError(
                "invalid_image", f"page {frame} could not be decoded: {public_message(exc)}"
            ) from exc
        # Copy the one frame out so the file can close; the copy keeps ``info`` (and with it
        # the EXIF orientation, which normalise_page applies).
        return im.copy()


def _check_pdf_pages(
    pdf: pdfium.PdfDocument, pages: int, dpi: int, max_pixels: int, max_aspect: float
) -> tuple[tuple[int, PageError], ...]:
    """The pages of ``pdf`` that would be too large or too long once rendered at ``dpi``,
    and why: read from each page's size (points), no page rendered."""
    refused = []
    for index in range(pages):
        try:
            w_pt, h_pt = pdf.get_page_size(index)
        except Exception:  # a malformed page tree
            error = PageError("invalid_pdf", f"page {index + 1} has no readable size")
            refused.append((index, error))
            continue
        size = (round(w_pt * dpi / 72), round(h_pt * dpi / 72))
        try:
            check_aspect(size, max_aspect)
            check_pixels(size, max_pixels)
        except PageError as exc:
            inches = f"{w_pt / 72:.0f}x{h_pt / 72:.0f} inches"
            message = f"page {index + 1} ({inches}): {exc.message}"
            refused.append((index, PageError(exc.code, message)))
    return tuple(refused)


def check_pixels(size: tuple[int, int], max_pixels: int) -> None:
    """Refuse a page over ``max_pixels`` with ``too_large`` (call before decoding)."""
    w, h = size
    if w * h > max_pixels:
        raise PageError(
            "too_large",
            f"{w}x{h} is {w * h} pixels, over the limit of {max_pixels} (HTRQ_MAX_PIXELS); "
            "scan at a lower DPI",
        )


def check_aspect(size: tuple[int, int], max_aspect: float) -> None:
    """Refuse a page whose long side is more than ``max_aspect`` times its short side."""
    w, h = size
    if max(w, h) > max_aspect * max(1, min(w, h)):
        raise PageError(
            "extreme_aspect",
            f"{w}x{h} is more than {max_aspect:g} times as long as it is wide; "
            "upload pages or single lines",
        )


def _count_frames(im: Image.Image, max_pages: int) -> int:
    """Frames of a multi-frame image, counted one seek at a time and no further than one
    past ``max_pages`` (Pillow's ``n_frames`` reads every frame, and a damaged frame
    header can raise anything)."""
    count = 1
    try:
        while count <= max_pages:
            im.seek(count)
            _check_not_empty(im.size, count)
            count += 1
    except EOFError:
        pass
    except PageError:
        raise
    except Exception as exc:
        raise PageError("invalid_image", f"frame {count} could not be read") from exc
    finally:
        with contextlib.suppress(Exception):
            im.seek(0)
    return count


def _check_not_empty(size: tuple[int, int], frame: int) -> None:
    if size[0] <= 0 or size[1] <= 0:
        raise PageError("empty_image", f"page {frame} has no pixels ({size[0]}x{size[1]})")


@contextlib.contextmanager
def _open_image(data: Source) -> Iterator[Image.Image]:
    """Open (not decode) an image; Pillow's own bomb guard becomes ``too_large``."""
    try:
        with warnings.catch_warnings():
            # Our own bound (check_pixels) decides; Pillow's warning would only add noise,
            # and its error (over twice its limit) is mapped to too_large below.
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            im = Image.open(data if isinstance(data, Path) else io.BytesIO(data))
    except Image.DecompressionBombError:
        # Pillow refuses to open past twice its own bound (about 179 million pixels), far
        # past ours: say ours, not Pillow's words about attacks.
        raise PageError(
            "too_large",
            "the image has more pixels than this server reads (over the limit set by "
            "HTRQ_MAX_PIXELS); scan at a lower DPI",
        ) from None
    except Exception as exc:  # Pillow raises several types for unreadable data
        raise PageError(
            "unsupported_format", "not a readable PDF, PNG, JPEG, TIFF, WebP or BMP file"
        ) from exc
    with im:
        yield im


@contextlib.contextmanager
def _open_pdf(data: Source) -> Iterator[pdfium.PdfDocument]:
    try:
        pdf = pdfium.PdfDocument(data)
    except pdfium.PdfiumError as exc:
        if exc.err_code == _PDF_ERR_PASSWORD:
            raise PageError(
                "encrypted_pdf", "the PDF is password-protected; upload an unprotected copy"
            ) from exc
        raise PageError("invalid_pdf", f"the PDF could not be read: {exc}") from exc
    try:
        yield pdf
    finally:
        pdf.close()


def render_pdf_page(
    data: bytes,
    index: int,
    *,
    dpi: int,
    max_pixels: int,
    max_aspect: float = DEFAULT_MAX_ASPECT,
    grey: bool = True,
) -> Image.Image:
    """Page ``index`` of a PDF, rendered at ``dpi`` once its size is checked: in grey, or in
    colour (RGB) with ``grey=False``."""
    with _open_pdf(data) as pdf:
        if not 0 <= index < len(pdf):
            raise PageError("invalid_pdf", f"the PDF has no page {index}")
        try:
            page = pdf[index]
            try:
                # Page size is in points (1/72 inch): check the rendered size before rendering.
                w_pt, h_pt = page.get_size()
                scale = dpi / 72
                size = (round(w_pt * scale), round(h_pt * scale))
                _check_not_empty(size, index)
                check_aspect(size, max_aspect)
                check_pixels(size, max_pixels)
                # Grey for reading: the recognizer reads L images, and it is a third of RGB.
                image: Image.Image = page.render(scale=scale, grayscale=grey).to_pil()
                return image
            finally:
                page.close()
        except PageError:
            raise
        except Exception as exc:  # PdfiumError or a malformed page object
            raise PageError(
                "invalid_pdf", f"page {index} could not be rendered ({type(exc).__name__})"
            ) from exc


class RenderLimits(Protocol):
    """How a stored page is rendered: the settings, or a pipeline built from them."""

    @property
    def pdf_dpi(self) -> int: ...

    @property
    def max_pixels(self) -> int: ...

    @property
    def max_aspect(self) -> float: ...


def render_stored_page(
    data: bytes,
    frame: int,
    limits: RenderLimits,
    *,
    render: Callable[..., Image.Image] = render_page,
    grey: bool = True,
) -> Image.Image:
    """:func:`render_page` (or ``render``, which takes its arguments: a PDF renderer's) at
    ``limits``' PDF resolution and within its pixel and shape bounds: page ``frame`` as the
    worker reads it, the review page shows it and the corrections export cuts it."""
    return render(
        data,
        frame,
        dpi=limits.pdf_dpi,
        max_pixels=limits.max_pixels,
        max_aspect=limits.max_aspect,
        grey=grey,
    )
