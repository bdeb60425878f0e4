"""Page normalisation: orientation, grayscale, contrast, deskew, size and blank checks."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image, ImageDraw

from htrq.errors import PageError
from htrq.inputs import render_page
from worker.segmentation.preprocess import (
    BLANK_INFO_KEY,
    SKEW_INFO_KEY,
    estimate_skew,
    normalise_page,
    rotate_page,
    rotate_points,
)


def striped_page(size: tuple[int, int] = (600, 400)) -> Image.Image:
    """Dark horizontal bars, like lines of text, on light grey paper."""
    im = Image.new("L", size, 200)
    d = ImageDraw.Draw(im)
    for y in range(40, size[1] - 40, 50):
        d.rectangle((40, y, size[0] - 40, y + 14), fill=90)
    return im


def test_exif_orientation_is_applied() -> None:
    """A JPEG tagged 'rotate 90' comes out upright (its width and height swapped)."""
    im = striped_page((300, 200)).convert("RGB")
    exif = Image.Exif()
    exif[0x0112] = 6  # Orientation: rotate 90 CW to display
    buf = io.BytesIO()
    im.save(buf, "JPEG", exif=exif)
    out = normalise_page(render_page(buf.getvalue(), 0), max_pixels=10**6, deskew=False)
    assert out.size == (200, 300)
    assert out.mode == "L"


def test_contrast_is_stretched() -> None:
    """Faint ink on grey paper is stretched to (nearly) black on white."""
    out = normalise_page(striped_page(), max_pixels=10**6, deskew=False)
    lo, hi = out.getextrema()
    assert lo <= 5 and hi >= 250


@pytest.mark.parametrize("angle", [-3.0, 1.5, 4.0])
def test_small_rotations_are_measured_and_undone(angle: float) -> None:
    """A page rotated by a few degrees is measured to within 0.3 degrees and straightened."""
    page = striped_page()
    tilted = rotate_page(page, angle)
    assert estimate_skew(tilted) == pytest.approx(-angle, abs=0.3)
    out = normalise_page(tilted, max_pixels=10**6)
    assert out.info[SKEW_INFO_KEY] == pytest.approx(-angle, abs=0.3)
    assert abs(estimate_skew(out)) <= 0.3


def test_straight_pages_and_single_lines_are_not_rotated() -> None:
    """No rotation for a straight page, nor for a line-shaped image (it would clip its ends)."""
    assert normalise_page(striped_page(), max_pixels=10**6).info[SKEW_INFO_KEY] == 0.0
    line = Image.new("L", (900, 60), 255)
    ImageDraw.Draw(line).rectangle((20, 20, 880, 40), fill=0)
    line = rotate_page(line, 2.0)
    assert normalise_page(line, max_pixels=10**6).info[SKEW_INFO_KEY] == 0.0


def test_rotate_points_inverts_the_page_rotation() -> None:
    """A mark moved by rotate_page maps back to where it was with rotate_points."""
    page = Image.new("L", (400, 300), 255)
    page.putpixel((100, 60), 0)
    page.putpixel((101, 60), 0)
    page.putpixel((100, 61), 0)
    page.putpixel((101, 61), 0)
    rotated = np.asarray(rotate_page(page, 3.0))
    ys, xs = np.nonzero(rotated < 200)
    back = rotate_points([(round(xs.mean()), round(ys.mean()))], 3.0, (400, 300))
    assert back[0] == pytest.approx((100.5, 60.5), abs=1.5)


def test_too_large_pages_are_refused_and_blank_ones_marked() -> None:
    """Over the pixel bound is too_large; a single-tone page is marked blank, not refused."""
    with pytest.raises(PageError) as err:
        normalise_page(striped_page(), max_pixels=1000)
    assert err.value.code == "too_large"
    blank = normalise_page(Image.new("L", (300, 200), 240), max_pixels=10**6)
    assert blank.info[BLANK_INFO_KEY] is True
    assert not normalise_page(striped_page(), max_pixels=10**6).info.get(BLANK_INFO_KEY)
