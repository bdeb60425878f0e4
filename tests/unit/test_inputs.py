"""Uploads: PDF pages, TIFF frames and image files become pages; bad files get clear codes."""

from __future__ import annotations

import io
import struct
import warnings
import zlib

import numpy as np
import pytest
from PIL import Image, ImageDraw

from htrq.errors import PageError
from htrq.inputs import inspect_upload, render_page
from tests.pdfs import PAGE_OBJECTS, broken_pdf, encrypted_pdf, minimal_pdf, pdf_of


def bar_pages(n: int, size: tuple[int, int] = (200, 100)) -> list[Image.Image]:
    """Pages told apart by where a black bar stands: page i has it at x = 10 + 50 i."""
    pages = []
    for i in range(n):
        im = Image.new("L", size, 255)
        ImageDraw.Draw(im).rectangle((10 + 50 * i, 10, 40 + 50 * i, 90), fill=0)
        pages.append(im)
    return pages


def bar_position(im: Image.Image) -> int:
    cols = np.asarray(im.convert("L"), np.float32).mean(axis=0)
    dark = np.flatnonzero(cols < 128)
    return round(int(dark[0]) / im.width * 200)


def png_header(width: int, height: int) -> bytes:
    """A PNG that declares ``width`` x ``height`` but holds no pixel data at all."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return (
            struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
        )

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IEND", b"")


def codes(fn, *args, **kwargs) -> str:
    with pytest.raises(PageError) as err:
        fn(*args, **kwargs)
    return err.value.code


def test_three_page_pdf_becomes_three_pages_in_order() -> None:
    """A 3-page PDF counts 3 pages and renders each one, in order, at the requested DPI."""
    data = pdf_of(bar_pages(3))
    info = inspect_upload(data)
    assert (info.format, info.pages) == ("PDF", 3)
    rendered = [render_page(data, i, dpi=100) for i in range(3)]
    assert [bar_position(im) for im in rendered] == [10, 60, 110]
    assert rendered[0].size == (200, 100)  # 2 x 1 inch at 100 dpi
    assert render_page(data, 0, dpi=50).size == (100, 50)


def test_multi_frame_tiff_pages() -> None:
    """Each frame of a TIFF is a page; a frame past the end is a clear error."""
    frames = bar_pages(3)
    buf = io.BytesIO()
    frames[0].save(buf, "TIFF", save_all=True, append_images=frames[1:])
    data = buf.getvalue()
    info = inspect_upload(data)
    assert (info.format, info.pages) == ("TIFF", 3)
    assert [bar_position(render_page(data, i)) for i in range(3)] == [10, 60, 110]
    assert codes(render_page, data, 3) == "invalid_image"


def test_single_images_are_one_page() -> None:
    """PNG, JPEG, WebP and BMP files are one page each."""
    for fmt in ("PNG", "JPEG", "WEBP", "BMP"):
        buf = io.BytesIO()
        bar_pages(1)[0].save(buf, fmt)
        assert inspect_upload(buf.getvalue()).pages == 1
        assert bar_position(render_page(buf.getvalue(), 0)) == 10


def test_broken_pdfs_get_invalid_pdf() -> None:
    """Garbage after a PDF header, a truncated PDF and a PDF without pages are invalid_pdf."""
    good = pdf_of(bar_pages(2))
    assert codes(inspect_upload, broken_pdf()) == "invalid_pdf"
    assert codes(inspect_upload, good[: len(good) // 3]) == "invalid_pdf"
    no_pages = minimal_pdf(
        ["<< /Type /Catalog /Pages 2 0 R >>", "<< /Type /Pages /Kids [] /Count 0 >>"]
    )
    assert codes(inspect_upload, no_pages) == "invalid_pdf"
    assert codes(render_page, good, 5) == "invalid_pdf"


def test_encrypted_pdf_gets_encrypted_pdf() -> None:
    """A PDF that needs a password is refused with encrypted_pdf, at upload and at render."""
    data = encrypted_pdf()
    assert codes(inspect_upload, data) == "encrypted_pdf"
    assert codes(render_page, data, 0) == "encrypted_pdf"
    # The same file without the encryption dictionary opens.
    assert inspect_upload(minimal_pdf(PAGE_OBJECTS)).pages == 1


def test_too_many_pages() -> None:
    """A file over the page limit is refused whole with too_many_pages."""
    assert codes(inspect_upload, pdf_of(bar_pages(3)), max_pages=2) == "too_many_pages"


def test_decompression_bomb_is_too_large_without_decoding() -> None:
    """Headers that promise huge images are refused with too_large before any decoding.

    The files hold no pixel data at all, so reaching ``too_large`` (not ``invalid_image``)
    proves the size was checked before decoding; Pillow's own bomb guard is mapped too.
    """
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # Pillow's DecompressionBombWarning must not leak
        assert codes(render_page, png_header(12_000, 12_000), 0) == "too_large"
        assert codes(inspect_upload, png_header(60_000, 60_000)) == "too_large"
        assert codes(inspect_upload, png_header(3_000, 3_000), max_pixels=10**6) == "too_large"
        assert inspect_upload(png_header(3_000, 3_000)).pages == 1  # no bound given
        assert codes(render_page, png_header(3_000, 3_000), 0, max_pixels=1_000_000) == "too_large"
        # A PDF page whose rendering at the requested DPI would be over the bound.
        assert (
            codes(render_page, pdf_of(bar_pages(1)), 0, dpi=3000, max_pixels=10**7) == "too_large"
        )


def test_empty_and_unknown_files() -> None:
    """Empty bytes, non-images and unaccepted formats get their own codes."""
    assert codes(inspect_upload, b"") == "empty_file"
    assert codes(render_page, b"", 0) == "empty_file"
    assert codes(inspect_upload, b"hello, world") == "unsupported_format"
    buf = io.BytesIO()
    Image.new("L", (10, 10)).save(buf, "GIF")
    assert codes(inspect_upload, buf.getvalue()) == "unsupported_format"
