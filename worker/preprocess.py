"""Turn a decoded page into the normalised image the segmenter and recognizer expect."""

from __future__ import annotations

from PIL import Image, ImageOps

from htrq.errors import PageError


def normalise_page(im: Image.Image, *, max_pixels: int) -> Image.Image:
    """Apply EXIF orientation, refuse oversized pages, and convert to 8-bit grayscale."""
    w, h = im.size
    if w == 0 or h == 0:
        raise PageError("empty_image", "the image has no pixels")
    if w * h > max_pixels:
        raise PageError(
            "too_large",
            f"{w}x{h} is {w * h} pixels, over the limit of {max_pixels}; scan at a lower DPI",
        )
    im = ImageOps.exif_transpose(im)
    return im.convert("L")
