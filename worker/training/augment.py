"""Augmentation for real scanned lines: what another scan of another page could look like.

Real training lines are few (thousands, where synthetic ones are endless), so each is shown
many times; varying it the way scans vary keeps the model from learning the crops by heart.
Every transform keeps the text readable and in place: small turns and slants, a gentle
elastic warp of the strokes, contrast and paper tone, blur, noise, faded ink and the ghost of
the other side of the sheet. Grey ``L`` images in, grey ``L`` images out; no torch, since
this runs in data-loader workers.
"""

from __future__ import annotations

import random

import cv2
import numpy as np
from PIL import Image


def augment_scan(im: Image.Image, rng: random.Random, *, strength: float = 1.0) -> Image.Image:
    """A randomly varied copy of a grey line crop (``strength`` 0 returns it unchanged)."""
    if strength <= 0:
        return im
    a = np.asarray(im.convert("L"), dtype=np.float32)
    paper = float(np.percentile(a, 90))
    if rng.random() < 0.5:
        a = _affine(a, rng, strength, paper)
    if rng.random() < 0.35:
        a = _elastic(a, rng, strength, paper)
    if rng.random() < 0.25:
        a = _bleed_through(a, rng, strength, paper)
    if rng.random() < 0.3:
        a = _fade_ink(a, rng, strength, paper)
    if rng.random() < 0.5:
        a = _tone(a, rng, strength)
    if rng.random() < 0.25:
        sigma = rng.uniform(0.3, 0.9 * strength + 0.3)
        a = cv2.GaussianBlur(a, (0, 0), sigma)
    if rng.random() < 0.3:
        np_rng = np.random.default_rng(rng.getrandbits(32))
        a = a + np_rng.normal(0.0, rng.uniform(2, 10 * strength), a.shape)
    return Image.fromarray(np.clip(a, 0, 255).astype(np.uint8), "L")


def _affine(a: np.ndarray, rng: random.Random, strength: float, paper: float) -> np.ndarray:
    """A small turn (±1.5°), slant (shear ±0.25) and scale change, about the centre."""
    h, w = a.shape
    angle = np.deg2rad(rng.uniform(-1.5, 1.5) * strength)
    shear = rng.uniform(-0.25, 0.25) * strength
    scale = 1.0 + rng.uniform(-0.06, 0.06) * strength
    rot = np.array([[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]])
    m = scale * rot @ np.array([[1.0, shear], [0.0, 1.0]])
    centre = np.array([w / 2, h / 2])
    # A slant moves the top and bottom rows sideways: widen the canvas so no ink leaves it.
    extra = int(abs(shear) * h / 2) + 2
    offset = centre + extra - m @ centre
    out_w = w + 2 * extra
    mat = np.hstack([m, offset[:, None]]).astype(np.float32)
    mat[1, 2] -= extra
    return cv2.warpAffine(
        a,
        mat,
        (out_w, h),
        flags=cv2.INTER_LINEAR,
        borderMode=cv2.BORDER_CONSTANT,
        borderValue=paper,
    )


def _elastic(a: np.ndarray, rng: random.Random, strength: float, paper: float) -> np.ndarray:
    """Strokes bent by a smooth random displacement field (a few per cent of the height)."""
    h, w = a.shape
    np_rng = np.random.default_rng(rng.getrandbits(32))
    sigma = max(2.0, h / 6)
    alpha = h * rng.uniform(0.02, 0.06) * strength
    dx, dy = (
        cv2.GaussianBlur(np_rng.uniform(-1, 1, (h, w)).astype(np.float32), (0, 0), sigma)
        for _ in range(2)
    )
    # A blurred uniform field is tiny; scale each to unit peak so alpha is in pixels.
    dx *= alpha / max(1e-6, float(np.abs(dx).max()))
    dy *= alpha / max(1e-6, float(np.abs(dy).max()))
    xs, ys = np.meshgrid(np.arange(w, dtype=np.float32), np.arange(h, dtype=np.float32))
    return cv2.remap(
        a,
        xs + dx,
        ys + dy,
        cv2.INTER_LINEAR,
        borderMode=cv2.BORDER_CONSTANT,
        borderValue=paper,
    )


def _bleed_through(a: np.ndarray, rng: random.Random, strength: float, paper: float) -> np.ndarray:
    """The faint, blurred mirror image of writing on the other side of the sheet."""
    ghost = cv2.GaussianBlur(a[:, ::-1], (0, 0), rng.uniform(0.8, 2.0))
    shift = rng.randrange(-a.shape[0] // 3, a.shape[0] // 3 + 1)
    ghost = np.roll(ghost, shift, axis=0)
    depth = rng.uniform(0.08, 0.25) * strength
    return np.minimum(a, paper - depth * (paper - ghost))


def _fade_ink(a: np.ndarray, rng: random.Random, strength: float, paper: float) -> np.ndarray:
    """Ink lighter by up to half its contrast, unevenly along the line."""
    w = a.shape[1]
    knots = np.array([rng.uniform(0.0, 0.5 * strength) for _ in range(4)], dtype=np.float32)
    fade = np.interp(np.arange(w), np.linspace(0, w - 1, len(knots)), knots)[None, :]
    return a + fade * (paper - a)


def _tone(a: np.ndarray, rng: random.Random, strength: float) -> np.ndarray:
    """Contrast and brightness: darker or greyer paper, weaker or stronger ink."""
    contrast = 1.0 + rng.uniform(-0.35, 0.2) * strength
    shift = rng.uniform(-25, 25) * strength
    mean = float(a.mean())
    return (a - mean) * contrast + mean + shift
