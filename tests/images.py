"""Small page images for tests, made on the fly."""

from __future__ import annotations

import io

from PIL import Image, ImageDraw


def page_png(text: str = "a line of text", size: tuple[int, int] = (160, 32)) -> bytes:
    """A small page image with one line of text on it."""
    im = Image.new("L", size, 255)
    ImageDraw.Draw(im).text((4, size[1] // 4), text, fill=0)
    buf = io.BytesIO()
    im.save(buf, "PNG")
    return buf.getvalue()


def corrupt_png() -> bytes:
    """A PNG whose header is fine (accepted at upload) but whose pixels are cut off."""
    data = page_png("corrupt")
    return data[: len(data) // 2]


def multipage_tiff(pages: int) -> bytes:
    """A multi-frame TIFF: one upload that becomes several pages."""
    frames = [Image.new("L", (160, 32), 255) for _ in range(pages)]
    for i, im in enumerate(frames):
        ImageDraw.Draw(im).text((4, 8), f"frame {i}", fill=0)
    buf = io.BytesIO()
    frames[0].save(buf, "TIFF", save_all=True, append_images=frames[1:])
    return buf.getvalue()
