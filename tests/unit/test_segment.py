"""Line segmentation, crops, wide-line splitting and re-joining, and the scoring helpers."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image, ImageDraw

from worker.recognition.splitting import join_all, join_pieces, split_all, split_wide
from worker.segmentation import LineBox, WholeImageSegmenter, make_segmenter
from worker.segmentation.classical import ClassicalSegmenter, prepare
from worker.segmentation.crops import crop_lines, to_source_frame
from worker.segmentation.preprocess import SKEW_INFO_KEY, normalise_page
from worker.segmentation.scoring import iou, match
from worker.training.synth_pages import archive_text, render_page


@pytest.mark.slow  # a whole page through the segmenter: seconds each
@pytest.mark.parametrize(
    "seed",
    [
        1,  # unruled, cursive school hand, skewed 1.2 degrees
        8,  # ruled paper with a margin rule, skewed -1.5 degrees
    ],
)
def test_finds_every_line_of_a_synthetic_page(seed: int) -> None:
    """On a rendered page the segmenter finds each line once, in reading order."""
    page = render_page(seed)
    norm = normalise_page(page.image, max_pixels=10**8)
    found = make_segmenter("classical")(norm)
    found = to_source_frame(found, norm.info[SKEW_INFO_KEY], norm.size)
    truth = [ln.bbox for ln in page.lines]
    assert len(found) == len(truth)
    assert match([ln.bbox for ln in found], truth).true_positives == len(truth)
    middles = [(b.bbox[1] + b.bbox[3]) / 2 for b in found]
    assert middles == sorted(middles)
    assert all(b.polygon and len(b.polygon) >= 3 and b.baseline for b in found)


@pytest.mark.slow  # a whole page through the segmenter: seconds each
@pytest.mark.parametrize(
    "seed",
    [
        0,  # uneven lines: the row profile repeats best every second line
        6,  # ... every third line
        4,  # a two-digit amount alone on its line
        17,  # a short date alone on its line
    ],
)
def test_finds_every_line_of_a_form_like_page(seed: int) -> None:
    """Pages of names, dates and amounts: lines of very uneven length, some only a few
    characters long. The pitch is the distance between neighbouring lines, not a multiple
    of it, and a short line alone on its row is a line, not a stray mark."""
    page = render_page(seed, text=archive_text(seed))
    norm = normalise_page(page.image, max_pixels=10**8)
    prepared = prepare(norm, ClassicalSegmenter().work_size)
    assert prepared is not None
    _, pitch, f = prepared
    middles = sorted((ln.bbox[1] + ln.bbox[3]) / 2 * f for ln in page.lines)
    assert pitch == pytest.approx(float(np.median(np.diff(middles))), rel=0.1)
    found = make_segmenter("classical")(norm)
    found = to_source_frame(found, norm.info[SKEW_INFO_KEY], norm.size)
    truth = [ln.bbox for ln in page.lines]
    assert match([ln.bbox for ln in found], truth).true_positives == len(truth) == len(found)


@pytest.mark.slow  # a whole page through the segmenter: seconds each
def test_projection_baseline_segments_a_plain_page() -> None:
    """The projection-profile baseline finds the lines of a plain, gently skewed page."""
    page = render_page(1)
    norm = normalise_page(page.image, max_pixels=10**8)
    found = to_source_frame(make_segmenter("projection")(norm), norm.info[SKEW_INFO_KEY], norm.size)
    assert match([ln.bbox for ln in found], [ln.bbox for ln in page.lines]).f1 >= 0.9


def test_single_line_uploads_give_one_line() -> None:
    """A small line image in mode=page gives one line: found, or else the whole image."""
    for text, whole in (("a line of text", False), ("a", True)):
        im = Image.new("L", (160, 32), 255)
        ImageDraw.Draw(im).text((4, 8), text, fill=0)
        (line,) = make_segmenter("classical")(im)
        assert (line.bbox == (0, 0, 160, 32)) is whole


def test_blank_page_has_no_lines() -> None:
    """A page without ink gives no lines rather than an error."""
    page = Image.new("L", (800, 600), 255)
    page.putpixel((10, 10), 250)
    assert make_segmenter("classical")(page) == []


def test_whole_image_and_unknown_segmenters() -> None:
    """mode=line treats the image as one line; an unknown name is refused."""
    assert WholeImageSegmenter()(Image.new("L", (300, 40))) == [LineBox(bbox=(0, 0, 300, 40))]
    with pytest.raises(ValueError, match="classical"):
        make_segmenter("magic")


def test_crop_lines_margin_and_polygon_mask() -> None:
    """Crops get the margin (clipped at the page edge); ink outside the polygon is blanked."""
    page = Image.new("L", (200, 100), 255)
    ImageDraw.Draw(page).rectangle((0, 10, 199, 13), fill=0)  # a neighbour's descenders
    # The box reaches up to the neighbour's ink; the polygon (the line's own outline) does not.
    box = LineBox(bbox=(0, 14, 100, 40), polygon=[(0, 20), (100, 20), (100, 40), (0, 40)])
    (plain,) = crop_lines(page, [box], margin=4, mask=False)
    assert plain.size == (104, 34)  # 4 px margin, clipped at x = 0
    assert np.asarray(plain).min() == 0
    (masked,) = crop_lines(page, [box], margin=4)
    assert masked.size == plain.size
    assert np.asarray(masked).min() == 255


def words_line(height: int = 32, n_words: int = 30) -> Image.Image:
    """A long line of dark 'words' with white gaps; each word's tone tells it apart."""
    im = Image.new("L", (n_words * 70, height), 255)
    d = ImageDraw.Draw(im)
    for i in range(n_words):
        d.rectangle((i * 70 + 5, 8, i * 70 + 55, height - 8), fill=i * 6)
    return im


def test_split_wide_pieces_fit_overlap_and_cut_in_gaps() -> None:
    """Pieces are at most 12 heights wide, cover the line with overlap, and cut in gaps."""
    line = words_line()
    assert len(split_wide(line.crop((0, 0, 12 * 32, 32)))) == 1
    pieces = split_wide(line, max_aspect=12, overlap=0.25)
    assert len(pieces) > 1
    assert all(p.width <= 12 * 32 and p.height == 32 for p in pieces)
    # Locate each piece in the line: each begins before the previous one ends (overlap),
    # and together they run from the first column to the last.
    arr = np.asarray(line)
    starts = []
    for p in pieces:
        pa = np.asarray(p)
        hits = [
            x
            for x in range(arr.shape[1] - p.width + 1)
            if np.array_equal(arr[:, x : x + p.width], pa)
        ]
        assert len(hits) == 1  # each word has its own tone, so a piece fits in one place
        starts.append(hits[0])
    ends = [s + p.width for s, p in zip(starts, pieces, strict=True)]
    assert starts[0] == 0 and ends[-1] == line.width
    assert all(starts[i + 1] < ends[i] for i in range(len(pieces) - 1))
    assert all(np.asarray(p)[:, -1].min() == 255 for p in pieces[:-1])  # cut in a gap


def test_join_pieces_merges_the_overlap() -> None:
    """Overlapping texts are merged once; unrelated texts are joined with a space."""
    assert (
        join_pieces(["the quick brown fo", "brown fox jumps over", "over the lazy dog"])
        == "the quick brown fox jumps over the lazy dog"
    )
    assert join_pieces(["one two thr", "two three four"]) == "one two three four"
    assert join_pieces(["hello wor", "xyz abc"]) == "hello wor xyz abc"
    assert join_pieces(["", "a b", ""]) == "a b"
    assert join_pieces([]) == ""


def test_split_all_and_join_all_round_trip() -> None:
    """Pieces of several crops are recognised flat and regrouped into one result per line."""
    short, long = words_line(n_words=3), words_line(n_words=30)
    pieces, counts = split_all([short, long, short], max_aspect=12)
    assert counts[0] == counts[2] == 1 and counts[1] > 1 and len(pieces) == sum(counts)
    texts = [("a b", 0.5)] + [("w x", 0.9)] * counts[1] + [("c", 1.0)]
    lines = join_all(texts, counts)
    assert [t for t, _ in lines][::2] == ["a b", "c"]
    assert lines[1][1] == pytest.approx(0.9)


def test_to_source_frame_maps_back_to_the_upload() -> None:
    """Without rotation lines are unchanged; with one, boxes follow the rotated polygon."""
    line = LineBox((100, 100, 300, 120), [(100, 100), (300, 100), (300, 120), (100, 120)])
    assert to_source_frame([line], 0.0, (400, 300)) == [line]
    (moved,) = to_source_frame([line], 2.0, (400, 300))
    # A 200 px wide line rotated by 2 degrees spans about 7 px more in height.
    height = moved.bbox[3] - moved.bbox[1]
    assert 25 <= height <= 30
    assert iou(moved.bbox, line.bbox) > 0.5


def test_match_is_one_to_one() -> None:
    """Two predictions on one true line count once; IoU below 0.5 does not count."""
    truth = [(0, 0, 100, 20), (0, 30, 100, 50)]
    s = match([(0, 0, 100, 20), (0, 1, 100, 21), (0, 40, 100, 60)], truth)
    assert (s.true_positives, s.predicted, s.expected) == (1, 3, 2)
    assert s.precision == pytest.approx(1 / 3) and s.recall == pytest.approx(0.5)
