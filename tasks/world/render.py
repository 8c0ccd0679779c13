"""Rendering styles and corruptions of the embedded world (numpy only, float images in [0, 255]).

A scene is rendered from the per-pixel signed distance ``d`` (pixels, shape ``(H, W)``) of the
union of its objects.  Styles:

* ``photo``: shaded fill on a graded, slightly noisy background (train / val / dev / v2);
* ``sketch``: outline strokes only, no fill, on paper: inside a shape equals the background;
* ``texture``: patterned (stripes / checks / dots) object on a patterned background;
* ``pixel``: coarse pixel art with a quantised palette;
* ``cartoon``: flat fill, thick dark outline, drop shadow, plain pastel background;
* ``palette``: false-colour (luminance mapped through a random colour ramp), posterised;
* the shifted dev split's styles (learning-rate choice only): ``silhouette`` (flat dark shape on light ground),
  ``halftone`` (:func:`halftone`) and ``warp`` (a smooth sine displacement of the photo).

Corruptions (``noise``, ``blur``, ``contrast``, ``jpeg``) act on ``uint8`` images ``(H, W, 3)``
at severities 1..5.
"""
from __future__ import annotations

import io

import numpy as np
from PIL import Image

Array = np.ndarray

__all__ = ["COLOURS", "fill_cov", "stroke_cov", "photo_background", "shade_fill", "pattern",
           "cartoon", "false_colour", "halftone", "pixelate", "corrupt", "CORRUPTIONS", "gradient_field"]

# Named colours (object and background palette).
COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (215, 40, 40), "orange": (245, 140, 30), "yellow": (240, 215, 45), "green": (45, 165, 60),
    "blue": (40, 80, 215), "purple": (135, 60, 185), "pink": (240, 135, 190), "brown": (125, 78, 38),
    "white": (242, 242, 242), "black": (28, 28, 28), "gray": (128, 128, 128), "cyan": (40, 200, 210),
}
CORRUPTIONS = ("noise", "blur", "contrast", "jpeg")
_NOISE = (10.0, 20.0, 30.0, 45.0, 65.0)
_BLUR = (0.6, 0.9, 1.2, 1.6, 2.1)
_CONTRAST = (0.6, 0.45, 0.32, 0.22, 0.14)
_JPEG = (40, 25, 15, 10, 6)


def fill_cov(d: Array) -> Array:
    """Anti-aliased fill coverage ``(H, W)`` in [0, 1] from a pixel SDF ``d`` ``(H, W)``."""
    return np.clip(0.5 - d, 0.0, 1.0)


def stroke_cov(d: Array, width: float) -> Array:
    """Anti-aliased outline coverage of stroke ``width`` pixels centred on the boundary ``d = 0``."""
    return np.clip(width / 2 + 0.5 - np.abs(d), 0.0, 1.0)


def gradient_field(rng: np.random.Generator, h: int, w: int, amplitude: float) -> Array:
    """Linear ramp ``(H, W)`` in [-amplitude, amplitude] along a random direction."""
    t = rng.uniform(0, 2 * np.pi)
    ys, xs = np.mgrid[0:h, 0:w]
    g = (np.cos(t) * (xs - w / 2) + np.sin(t) * (ys - h / 2)) / (max(h, w) / 2)
    return amplitude * g


def photo_background(rng: np.random.Generator, rgb: Array, h: int, w: int, gradient: float) -> Array:
    """Background ``(H, W, 3)``: base colour plus a brightness ramp."""
    return np.asarray(rgb, np.float64)[None, None, :] + gradient_field(rng, h, w, gradient)[..., None]


def shade_fill(rgb: Array, shade: Array) -> Array:
    """Object colour ``(H, W, 3)`` from base ``rgb`` (3,) and a brightness field ``shade`` (H, W)."""
    return np.asarray(rgb, np.float64)[None, None, :] + shade[..., None]


def pattern(rng: np.random.Generator, h: int, w: int, c1: Array, c2: Array, kind: str | None = None) -> tuple[Array, str]:
    """Two-colour pattern ``(H, W, 3)`` (``stripes``, ``checks`` or ``dots``) and its kind."""
    kind = kind or str(rng.choice(["stripes", "checks", "dots"]))
    ys, xs = np.mgrid[0:h, 0:w].astype(np.float64)
    period = rng.uniform(3.0, 6.0)
    t = rng.uniform(0, np.pi)
    u = np.cos(t) * xs + np.sin(t) * ys
    v = -np.sin(t) * xs + np.cos(t) * ys
    if kind == "stripes":
        m = (np.mod(u / period, 1.0) < 0.5).astype(np.float64)
    elif kind == "checks":
        m = ((np.floor(u / period) + np.floor(v / period)) % 2).astype(np.float64)
    else:
        du = np.mod(u, period) - period / 2
        dv = np.mod(v, period) - period / 2
        m = np.clip(period * 0.3 + 0.5 - np.hypot(du, dv), 0.0, 1.0)
    c1 = np.asarray(c1, np.float64)
    c2 = np.asarray(c2, np.float64)
    return c1[None, None] * m[..., None] + c2[None, None] * (1 - m[..., None]), kind


def cartoon(rng: np.random.Generator, d: Array, d_shadow: Array, rgb: Array, bg: Array) -> Array:
    """Cartoon: plain background, grey drop shadow, flat fill, thick dark outline.  ``(H, W, 3)``."""
    h, w = d.shape
    img = np.broadcast_to(np.asarray(bg, np.float64), (h, w, 3)).copy()
    sh = fill_cov(d_shadow)[..., None] * 0.35
    img = img * (1 - sh)
    cov = fill_cov(d)[..., None]
    img = img * (1 - cov) + np.asarray(rgb, np.float64)[None, None] * cov
    line = stroke_cov(d, rng.uniform(1.8, 2.8))[..., None]
    ink = rng.uniform(0, 40)
    return img * (1 - line) + ink * line


def false_colour(rng: np.random.Generator, img: Array) -> Array:
    """Map the (stretched) luminance of ``img`` ``(H, W, 3)`` through a random 3-stop colour ramp.

    The stops are three distinct named colours, so light and dark parts stay apart; the ramp is
    posterised to 4-6 levels.
    """
    lum = img @ np.array([0.299, 0.587, 0.114])
    lo, hi = np.percentile(lum, 1), np.percentile(lum, 99)
    lum = np.clip((lum - lo) / max(hi - lo, 1.0), 0, 1)
    levels = int(rng.integers(4, 7))
    lum = np.round(lum * (levels - 1)) / (levels - 1)
    names = sorted(COLOURS, key=lambda n: sum(COLOURS[n]))
    k = len(names)
    idx = [int(rng.integers(0, k // 3)), int(rng.integers(k // 3, 2 * k // 3)), int(rng.integers(2 * k // 3, k))]
    if rng.random() < 0.5:
        idx = idx[::-1]
    stops = np.array([COLOURS[names[i]] for i in idx], np.float64)
    a = np.clip(lum * 2, 0, 1)[..., None]
    b = np.clip(lum * 2 - 1, 0, 1)[..., None]
    return np.where(lum[..., None] < 0.5, stops[0] * (1 - a) + stops[1] * a, stops[1] * (1 - b) + stops[2] * b)


def halftone(rng: np.random.Generator, img: Array) -> Array:
    """``img`` ``(H, W, 3)`` printed as dots on a ``2.5-3.5`` px grid (random angle): each dot has the colour of the
    image at its centre and an area that grows with the darkness there, on light paper."""
    h, w = img.shape[:2]
    period, t = rng.uniform(2.5, 3.5), rng.uniform(0, np.pi / 2)
    ys, xs = np.mgrid[0:h, 0:w].astype(np.float64) + 0.5
    u, v = np.cos(t) * xs + np.sin(t) * ys, -np.sin(t) * xs + np.cos(t) * ys
    cu, cv = (np.floor(u / period) + 0.5) * period, (np.floor(v / period) + 0.5) * period
    cx, cy = np.cos(t) * cu - np.sin(t) * cv, np.sin(t) * cu + np.cos(t) * cv      # the dot centres, image frame
    ix = np.clip(cx.astype(int), 0, w - 1)
    iy = np.clip(cy.astype(int), 0, h - 1)
    centre = img[iy, ix]
    dark = 1.0 - (centre @ np.array([0.299, 0.587, 0.114])) / 255.0
    radius = period * (0.2 + 0.5 * np.sqrt(dark))
    cov = np.clip(radius + 0.5 - np.hypot(u - cu, v - cv), 0.0, 1.0)[..., None]
    paper = rng.uniform(225, 250) - rng.uniform(0, 8, 3)
    return paper * (1 - cov) + centre * cov


def pixelate(img_small: Array, factor: int, levels: int = 3) -> Array:
    """Quantise a coarse image ``(h, w, 3)`` to ``levels`` per channel and upsample ``factor``x."""
    q = np.round(np.clip(img_small, 0, 255) / 255.0 * (levels - 1)) / (levels - 1) * 255.0
    return np.kron(q, np.ones((factor, factor, 1)))


def _gauss_blur(img: Array, sigma: float) -> Array:
    rad = max(1, int(np.ceil(3 * sigma)))
    k = np.exp(-0.5 * (np.arange(-rad, rad + 1) / sigma) ** 2)
    k /= k.sum()
    pad = np.pad(img, ((rad, rad), (rad, rad), (0, 0)), mode="reflect")
    tmp = sum(k[i] * pad[:, i:i + img.shape[1]] for i in range(len(k)))
    return sum(k[i] * tmp[i:i + img.shape[0]] for i in range(len(k)))


def corrupt(img: Array, kind: str, severity: int, rng: np.random.Generator) -> Array:
    """Apply corruption ``kind`` at ``severity`` (1..5) to a ``uint8`` image ``(H, W, 3)``."""
    if not 1 <= severity <= 5:
        raise ValueError(f"severity must be in 1..5, got {severity}")
    x = img.astype(np.float64)
    s = severity - 1
    if kind == "noise":
        x = x + rng.normal(0.0, _NOISE[s], size=x.shape)
    elif kind == "blur":
        x = _gauss_blur(x, _BLUR[s])
    elif kind == "contrast":
        m = x.mean(axis=(0, 1), keepdims=True)
        x = m + (x - m) * _CONTRAST[s]
    elif kind == "jpeg":
        buf = io.BytesIO()
        Image.fromarray(img).save(buf, format="JPEG", quality=_JPEG[s])
        buf.seek(0)
        with Image.open(buf) as im:
            x = np.asarray(im.convert("RGB"), np.float64)
    else:
        raise ValueError(f"unknown corruption '{kind}', expected one of {CORRUPTIONS}")
    return np.clip(np.round(x), 0, 255).astype(np.uint8)
