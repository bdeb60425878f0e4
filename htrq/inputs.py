"""What an uploaded file holds: its format and how many pages it becomes.

The API calls :func:`inspect_upload` to split one upload into page rows (cheap: nothing is
decoded); the worker calls :func:`render_page` to turn one stored file plus a frame index into
a page image. No torch here.
"""

from __future__ import annotations

import io
from dataclasses import dataclass

from PIL import Image

from htrq.errors import PageError

#: Formats accepted for upload, by the name Pillow (or ``pdf``) gives them.
IMAGE_FORMATS = {"PNG", "JPEG", "TIFF", "WEBP", "BMP"}


@dataclass(frozen=True)
class UploadInfo:
    format: str  #: ``PNG``, ``JPEG``, ``TIFF``, ``WEBP``, ``BMP`` or ``PDF``
    pages: int  #: how many page rows the file becomes


def inspect_upload(data: bytes, *, max_pages: int = 500) -> UploadInfo:
    """Identify ``data`` and count its pages, or raise :class:`PageError`."""
    if not data:
        raise PageError("empty_file", "the uploaded file is empty")
    try:
        with Image.open(io.BytesIO(data)) as im:
            fmt = im.format or ""
    except Exception as exc:  # Pillow raises several types for unreadable data
        raise PageError(
            "unsupported_format", "not a readable PNG, JPEG, TIFF, WebP or BMP image"
        ) from exc
    if fmt not in IMAGE_FORMATS:
        raise PageError("unsupported_format", f"{fmt or 'unknown'} files are not accepted")
    return UploadInfo(format=fmt, pages=1)


def render_page(data: bytes, frame: int = 0, *, dpi: int = 300) -> Image.Image:
    """Return page ``frame`` of a stored upload as a PIL image (not yet normalised)."""
    try:
        im = Image.open(io.BytesIO(data))
        im.seek(frame)
        im.load()
    except Exception as exc:
        raise PageError("invalid_image", f"page {frame} could not be decoded: {exc}") from exc
    return im
