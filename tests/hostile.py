"""Hostile uploads, made on the fly: small files that cost a careless service dearly.

Each maker returns bytes; :data:`CORPUS` names each case with what the service must answer:
the whole request refused with an HTTP status and code, the page failed at submit, or the
page failed in the worker, always with a code and never a 5xx.
"""

from __future__ import annotations

import io
import struct
import warnings
import zlib
from dataclasses import dataclass

from PIL import Image, ImageDraw

from tests.images import corrupt_png, page_png
from tests.pdfs import broken_pdf, encrypted_pdf


def png(size: tuple[int, int], fill: int = 255) -> bytes:
    im = Image.new("L", size, fill)
    ImageDraw.Draw(im).rectangle((0, 0, min(size[0], 8) - 1, min(size[1], 8) - 1), fill=0)
    buf = io.BytesIO()
    im.save(buf, "PNG")
    return buf.getvalue()


def saved_as(fmt: str) -> bytes:
    """A small page image in ``fmt`` (a format Pillow writes but the service refuses)."""
    im: Image.Image = Image.open(io.BytesIO(page_png("not accepted")))
    if fmt in ("ICO", "GIF", "PCX", "TGA", "DDS"):
        im = im.convert("RGB" if fmt == "DDS" else "L")
    buf = io.BytesIO()
    with warnings.catch_warnings():
        # Pillow 12 deprecates writing some of these formats (IM); refusing them is the point.
        warnings.simplefilter("ignore", DeprecationWarning)
        im.save(buf, fmt)
    return buf.getvalue()


def tiff_frames(n: int) -> bytes:
    """A little-endian TIFF of ``n`` 1x1 frames, each its own IFD, written directly (Pillow
    takes minutes to write 80,000 frames; this takes a fraction of a second)."""
    entries = 8
    ifd_size = 2 + 12 * entries + 4
    pixel_at = 8  # one white byte right after the header, shared by every frame
    first = 16
    out = bytearray(b"II*\x00" + struct.pack("<I", first) + b"\xff" + b"\x00" * 7)
    for i in range(n):
        at = first + i * ifd_size
        nxt = at + ifd_size if i + 1 < n else 0
        tags = [
            (256, 3, 1, 1),  # width
            (257, 3, 1, 1),  # height
            (258, 3, 1, 8),  # bits per sample
            (259, 3, 1, 1),  # no compression
            (262, 3, 1, 1),  # black is zero
            (273, 4, 1, pixel_at),  # strip offset
            (278, 3, 1, 1),  # rows per strip
            (279, 4, 1, 1),  # strip byte count
        ]
        out += struct.pack("<H", entries)
        for tag, typ, count, value in tags:
            out += struct.pack("<HHII", tag, typ, count, value)
        out += struct.pack("<I", nxt)
    return bytes(out)


def tiff_second_frame_without_size() -> bytes:
    """Two frames; the second's width and height tags renamed to unknown ones."""
    data = bytearray(tiff_frames(2))
    second = 16 + 2 + 12 * 8 + 4
    for k in range(2):  # the first two entries are width and height
        struct.pack_into("<H", data, second + 2 + 12 * k, 65000 + k)
    return bytes(data)


@dataclass(frozen=True)
class Case:
    name: str
    filename: str
    data: bytes
    #: What the service answers: ("request", HTTP status, code) refuses the whole request;
    #: ("submit", code) fails the page at submit; ("worker", code) fails it in the worker;
    #: ("ok", stored filename) reads it.
    expect: tuple


def corpus() -> list[Case]:
    """Every hostile case, each to be sent beside a good page."""
    cases = [
        Case("corrupt PNG", "corrupt.png", corrupt_png(), ("worker", "invalid_image")),
        Case("broken PDF", "broken.pdf", broken_pdf(), ("submit", "invalid_pdf")),
        Case("encrypted PDF", "locked.pdf", encrypted_pdf(), ("submit", "encrypted_pdf")),
        Case("empty file", "empty.png", b"", ("submit", "empty_file")),
        Case("3,000,000 x 2 PNG", "long.png", png((3_000_000, 2)), ("submit", "extreme_aspect")),
        Case("50 x 100,000 page", "tall.png", png((50, 100_000)), ("submit", "extreme_aspect")),
        Case(
            "80,000 TIFF frames",
            "frames.tif",
            tiff_frames(80_000),
            ("request", 413, "too_many_pages"),
        ),
        Case(
            "TIFF frame without size",
            "nosize.tif",
            tiff_second_frame_without_size(),
            ("submit", "invalid_image"),
        ),
        Case("control characters", "a\x01b\x7f.png", page_png("x"), ("ok", "ab.png")),
        Case("NUL in the name", "nul\x00.png", page_png("x"), ("ok", "nul.png")),
        Case("300-character name", "n" * 300 + ".png", page_png("x"), ("ok", "n" * 251 + ".png")),
        Case("a path as the name", "../../etc/passwd.png", page_png("x"), ("ok", "passwd.png")),
        Case(
            "Unicode name",
            "Brief an Frau Müller — 1905 ✉.png",
            page_png("x"),
            ("ok", "Brief an Frau Müller — 1905 ✉.png"),
        ),
        Case("pixel bomb header", "bomb.png", _bomb_png(), ("submit", "too_large")),
    ]
    for fmt in ("GIF", "TGA", "PCX", "ICO", "PPM", "SGI", "IM", "DDS"):
        try:
            data = saved_as(fmt)
        except (OSError, KeyError, ValueError):  # a Pillow build without that writer
            continue
        cases.append(
            Case(f"{fmt} file", f"page.{fmt.lower()}", data, ("submit", "unsupported_format"))
        )
    return cases


def _bomb_png() -> bytes:
    """A PNG whose header claims 30,000 x 30,000 pixels (900 megapixels) in 57 bytes:
    refused from the header, never decoded."""

    def chunk(kind: bytes, body: bytes) -> bytes:
        return (
            struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))
        )

    header = struct.pack(">IIBBBBB", 30_000, 30_000, 8, 0, 0, 0, 0)  # 8-bit grey
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IEND", b"")
