"""Procedural image-caption generator of the embedded world.

Images are ``48 x 48`` RGB.  Why 48: at 32 px the small objects of 2- or 3-object scenes (about
12 px across) lose the detail that separates e.g. a pentagon from a hexagon or a star, while at
64 px a ViT with a useful patch grid (8 x 8) needs 8 px patches and the drawing / PNG / training
cost grows by 1.8x.  With 6 px patches a 48 px image gives the same 64 tokens as the 32 px /
4 px prototype of the feasibility note, so a ViT trains on 2 CPU cores in minutes.

Every sample is a pure function of ``(seed, split key, index)``: its random stream is
``numpy.random.default_rng([seed, crc32(key), index])``, so the same seed gives the same bytes,
any single sample can be regenerated (tests re-render samples without their objects or without
their corruption), and splits with different keys or seeds never share samples.

Categories are shapes (:mod:`tasks.world.shapes`); attributes are fill colour, size, position,
count, rotation and background colour; each image has several captions naming them.
"""
from __future__ import annotations

import zlib
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np

from . import render as R
from .shapes import CLASSNAMES, plural, shape_sdf

__all__ = ["SceneRanges", "Sample", "make_sample", "sample_sdf", "captions_for", "STYLES", "DEV_SHIFT_STYLES", "HARDNESS",
           "sample_rng"]

STYLES = ("photo", "sketch", "texture", "pixel", "cartoon", "palette", "silhouette", "halftone", "warp")
#: styles of the shifted dev split only (learning-rate choice): no test split and no training augmentation uses them
DEV_SHIFT_STYLES = ("silhouette", "halftone", "warp")
HARDNESS = ("clutter", "occlusion", "small", "lowcontrast", "rotation")
_SIZE_RADIUS = {"small": (0.15, 0.21), "medium": (0.21, 0.29), "large": (0.30, 0.40)}  # x image size
_MULTI_RADIUS = {2: (0.16, 0.23), 3: (0.14, 0.19)}
_COUNT_WORD = {1: "a", 2: "two", 3: "three"}


@dataclass(frozen=True)
class SceneRanges:
    """Parameter ranges of scene sampling (``v2`` shifts them slightly)."""
    rotation_deg: float = 20.0
    radius_scale: float = 0.8
    aspect_jitter: float = 0.0
    colour_jitter: float = 14.0
    count_probs: tuple[float, float, float] = (0.8, 0.14, 0.06)
    shading: float = 30.0
    bg_gradient: float = 20.0
    noise: float = 3.0
    min_contrast: float = 110.0


@dataclass
class Sample:
    """One generated sample: ``image`` uint8 ``(H, W, 3)``, ``label``, ``captions``, ``meta``."""
    image: np.ndarray
    label: int
    captions: list[str]
    meta: dict[str, Any] = field(default_factory=dict)


def sample_rng(seed: int, key: str, index: int) -> np.random.Generator:
    """The random stream of sample ``index`` of split ``key``."""
    return np.random.default_rng([int(seed), zlib.crc32(key.encode()), int(index)])


def _article(word: str) -> str:
    return "an" if word[0] in "aeiou" else "a"


def _position(cx: float, cy: float, size: int) -> str:
    col = ("left", "center", "right")[min(2, int(3 * cx / size))]
    row = ("top", "middle", "bottom")[min(2, int(3 * cy / size))]
    if row == "middle":
        return col
    return row if col == "center" else f"{row} {col}"


def _where(position: str) -> str:
    """Phrase of a position word: "top left" -> "in the top left", "left" -> "on the left"."""
    if position in ("left", "right"):
        return f"on the {position}"
    if position in ("top", "bottom"):
        return f"at the {position}"
    return f"in the {position}"


def _sample_scene(rng: np.random.Generator, ranges: SceneRanges, size: int, hard: tuple[str, ...],
                  label: int | None = None) -> dict:
    drawn = int(rng.integers(len(CLASSNAMES)))
    label = drawn if label is None else int(label)
    count = int(rng.choice([1, 2, 3], p=np.asarray(ranges.count_probs) / sum(ranges.count_probs)))
    if "small" in hard:
        count, size_word, rr = 1, "small", (0.12, 0.17)
    elif count == 1:
        size_word = str(rng.choice(["small", "medium", "large"]))
        rr = _SIZE_RADIUS[size_word]
    else:
        size_word, rr = "small", _MULTI_RADIUS[count]
    rot = 90.0 if "rotation" in hard else ranges.rotation_deg
    objects: list[tuple[float, float, float, float, float]] = []
    for _ in range(count):
        for attempt in range(60):
            r = rng.uniform(*rr) * size * ranges.radius_scale * (0.97 ** (attempt // 20))
            cx, cy = rng.uniform(r + 0.5, size - r - 0.5, size=2)
            if all(np.hypot(cx - ox, cy - oy) > r + orr + 1.5 for ox, oy, orr, _, _ in objects):
                break
        theta = np.deg2rad(rng.uniform(-rot, rot))
        aspect = rng.uniform(1 - ranges.aspect_jitter, 1 + ranges.aspect_jitter)
        objects.append((float(cx), float(cy), float(r), float(theta), float(aspect)))
    names = list(R.COLOURS)
    colour = str(rng.choice(names))
    rgb = np.asarray(R.COLOURS[colour], np.float64)
    if "lowcontrast" in hard:
        bgs = [n for n in names if n != colour]
    else:
        bgs = [n for n in names if np.linalg.norm(rgb - R.COLOURS[n]) >= ranges.min_contrast] or \
              [n for n in names if n != colour]
    background = str(rng.choice(bgs))
    rgb = np.clip(rgb + rng.uniform(-ranges.colour_jitter, ranges.colour_jitter, 3), 0, 255)
    bg_rgb = np.clip(np.asarray(R.COLOURS[background], np.float64)
                     + rng.uniform(-ranges.colour_jitter, ranges.colour_jitter, 3), 0, 255)
    if "lowcontrast" in hard:
        rgb = bg_rgb + (rgb - bg_rgb) * rng.uniform(0.35, 0.55)
    cx, cy = objects[0][0], objects[0][1]
    return dict(label=label, classname=CLASSNAMES[label], count=count, size=size_word, objects=objects,
                colour=colour, rgb=rgb, background=background, bg_rgb=bg_rgb,
                position=_position(cx, cy, size) if count == 1 else "")


def _object_fields(scene: dict, size: int, grid: np.ndarray | None = None,
                   disp: tuple[np.ndarray, np.ndarray] | None = None,
                   offset: tuple[float, float] = (0.0, 0.0)) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Pixel SDF ``d`` and unit-frame coords ``(u, v)`` of the nearest object, all ``(H, W)``."""
    if grid is None:
        c = np.arange(size, dtype=np.float64) + 0.5
        ys, xs = np.meshgrid(c, c, indexing="ij")
    else:
        ys, xs = grid
    if disp is not None:
        xs, ys = xs + disp[0], ys + disp[1]
    xs, ys = xs - offset[0], ys - offset[1]
    best_d = np.full(xs.shape, np.inf)
    best_u = np.zeros(xs.shape)
    best_v = np.zeros(xs.shape)
    for cx, cy, r, theta, aspect in scene["objects"]:
        dx, dy = xs - cx, ys - cy
        ct, st = np.cos(theta), np.sin(theta)
        u = (ct * dx + st * dy) / (r * aspect)
        v = -(-st * dx + ct * dy) / r
        d = shape_sdf(scene["classname"], u, v) * r * min(aspect, 1.0)
        m = d < best_d
        best_d = np.where(m, d, best_d)
        best_u = np.where(m, u, best_u)
        best_v = np.where(m, v, best_v)
    return best_d, best_u, best_v


def _render_photo(rng: np.random.Generator, scene: dict, size: int, ranges: SceneRanges,
                  draw_objects: bool, hard: tuple[str, ...] = (), grid=None, px: float = 1.0) -> np.ndarray:
    h = size if grid is None else grid[0].shape[0]
    img = R.photo_background(rng, scene["bg_rgb"], h, h, ranges.bg_gradient)
    if "clutter" in hard:
        img = _clutter(rng, img, int(rng.integers(4, 10)))
    if draw_objects:
        d, u, v = _object_fields(scene, size, grid)
        t = rng.uniform(0, 2 * np.pi)
        shade = ranges.shading * np.clip(0.6 * (np.cos(t) * u + np.sin(t) * v), -1, 1)
        cov = R.fill_cov(d / px)[..., None]
        img = img * (1 - cov) + R.shade_fill(scene["rgb"], shade) * cov
        if "occlusion" in hard:
            img = _occlude(rng, img, d < 0)
    return img + rng.normal(0.0, ranges.noise, size=img.shape)


def _clutter(rng: np.random.Generator, img: np.ndarray, k: int) -> np.ndarray:
    """Draw ``k`` distractor strokes / blobs of random colours on ``img`` ``(H, W, 3)``."""
    h = img.shape[0]
    c = np.arange(h, dtype=np.float64) + 0.5
    ys, xs = np.meshgrid(c, c, indexing="ij")
    from .shapes import box, capsule, circle
    for _ in range(k):
        col = np.asarray(R.COLOURS[str(rng.choice(list(R.COLOURS)))], np.float64)
        kind = rng.integers(3)
        x0, y0 = rng.uniform(0, h, 2)
        if kind == 0:
            x1, y1 = x0 + rng.uniform(-14, 14), y0 + rng.uniform(-14, 14)
            d = capsule(xs, ys, x0, y0, x1, y1, rng.uniform(0.5, 1.5))
        elif kind == 1:
            d = circle(xs, ys, x0, y0, rng.uniform(1.5, 5))
        else:
            d = box(xs, ys, x0, y0, rng.uniform(1, 5), rng.uniform(1, 5))
        cov = R.fill_cov(d)[..., None]
        img = img * (1 - cov) + col * cov
    return img


def _occlude(rng: np.random.Generator, img: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """Cover 15-40 % of the object ``mask`` ``(H, W)`` with one or two random boxes."""
    h = img.shape[0]
    area = max(1, int(mask.sum()))
    ys, xs = np.nonzero(mask)
    for _ in range(20):
        occ = np.zeros_like(mask)
        for _ in range(int(rng.integers(1, 3))):
            i = rng.integers(len(ys)) if len(ys) else 0
            cy, cx = (ys[i], xs[i]) if len(ys) else (h // 2, h // 2)
            hw, hh = rng.uniform(2, h / 5, 2)
            y0, y1 = int(max(0, cy - hh)), int(min(h, cy + hh))
            x0, x1 = int(max(0, cx - hw)), int(min(h, cx + hw))
            occ[y0:y1, x0:x1] = True
        frac = (occ & mask).sum() / area
        if 0.15 <= frac <= 0.4:
            break
    col = np.asarray(R.COLOURS[str(rng.choice(list(R.COLOURS)))], np.float64)
    return np.where(occ[..., None], col + rng.normal(0, 4, img.shape), img)


def _render(rng: np.random.Generator, scene: dict, style: str, size: int, ranges: SceneRanges,
            draw_objects: bool, hard: tuple[str, ...]) -> tuple[np.ndarray, dict]:
    """Float image ``(H, W, 3)`` of ``scene`` in ``style`` plus style details for the captions."""
    extra: dict[str, Any] = {}
    if style == "photo":
        return _render_photo(rng, scene, size, ranges, draw_objects, hard), extra
    if style == "sketch":
        paper = rng.uniform(228, 252) - rng.uniform(0, 10, 3)
        img = np.broadcast_to(paper, (size, size, 3)) + rng.normal(0, 3.0, (size, size, 3))
        if draw_objects:
            c = np.arange(size, dtype=np.float64) + 0.5
            ys, xs = np.meshgrid(c, c, indexing="ij")
            amp, f = rng.uniform(0.3, 0.8), rng.uniform(0.15, 0.4)
            ph = rng.uniform(0, 2 * np.pi, 2)
            disp = (amp * np.sin(f * ys + ph[0]), amp * np.sin(f * xs + ph[1]))
            d, _, _ = _object_fields(scene, size, (ys, xs), disp)
            ink = rng.uniform(10, 70) + np.array([0.0, 0.0, rng.uniform(0, 40)])
            line = R.stroke_cov(d, rng.uniform(1.0, 1.8))[..., None] * rng.uniform(0.8, 1.0)
            img = img * (1 - line) + ink * line
        return img, extra
    if style == "texture":
        names = [n for n in R.COLOURS if n != scene["colour"]]
        c2, b1, b2 = (np.asarray(R.COLOURS[str(n)], np.float64) for n in rng.choice(names, 3, replace=False))
        bg, _ = R.pattern(rng, size, size, b1 * 0.5 + 90, b2 * 0.5 + 90)
        fg, kind = R.pattern(rng, size, size, scene["rgb"], c2)
        extra["pattern"] = {"stripes": "striped", "checks": "checkered", "dots": "dotted"}[kind]
        if not draw_objects:
            return bg, extra
        cov = R.fill_cov(_object_fields(scene, size)[0])[..., None]
        return bg * (1 - cov) + fg * cov, extra
    if style == "pixel":
        f = int(rng.choice([2, 3]) if size % 6 == 0 else 2)
        c = (np.arange(size // f, dtype=np.float64) + 0.5) * f
        ys, xs = np.meshgrid(c, c, indexing="ij")
        low = _render_photo(rng, scene, size, replace(ranges, noise=0.0, bg_gradient=0.0), draw_objects,
                            grid=(ys, xs), px=float(f))
        return R.pixelate(low, f), extra
    if style == "cartoon":
        bg = rng.uniform(200, 250, 3)
        rgb = np.asarray(R.COLOURS[scene["colour"]], np.float64)
        if not draw_objects:
            return np.broadcast_to(bg, (size, size, 3)).copy(), extra
        d = _object_fields(scene, size)[0]
        ds = _object_fields(scene, size, offset=(2.0, 2.0))[0]
        return R.cartoon(rng, d, ds, rgb, bg), extra
    if style == "palette":
        img = _render_photo(rng, scene, size, ranges, draw_objects)
        return R.false_colour(rng, img), extra
    if style == "silhouette":   # a flat dark shape on light ground: no colour, no shading, no outline
        ground = rng.uniform(200, 245) + rng.uniform(-8, 8, 3)
        img = np.broadcast_to(ground, (size, size, 3)) + rng.normal(0, 2.0, (size, size, 3))
        if draw_objects:
            cov = R.fill_cov(_object_fields(scene, size)[0])[..., None]
            img = img * (1 - cov) + (rng.uniform(15, 60) + rng.uniform(-10, 10, 3)) * cov
        return img, extra
    if style == "halftone":   # the photo printed as a grid of dots on paper, dot area from the local darkness
        photo = np.clip(_render_photo(rng, scene, size, ranges, draw_objects), 0, 255)
        return R.halftone(rng, photo), extra
    if style == "warp":   # the photo seen through a wavy glass: a smooth sine displacement of 1.5-3 px
        c = np.arange(size, dtype=np.float64) + 0.5
        ys, xs = np.meshgrid(c, c, indexing="ij")
        amp, f = rng.uniform(1.5, 3.0, 2), rng.uniform(0.15, 0.3, 2)
        ph = rng.uniform(0, 2 * np.pi, 2)
        grid = (ys + amp[0] * np.sin(f[0] * xs + ph[0]), xs + amp[1] * np.sin(f[1] * ys + ph[1]))
        return _render_photo(rng, scene, size, ranges, draw_objects, grid=grid), extra
    raise ValueError(f"unknown style '{style}', expected one of {STYLES}")


def _subject(scene: dict, rng: np.random.Generator, colour: bool | None = None, size: bool | None = None) -> str:
    """Noun phrase of the scene's objects; colour / size words drawn with p 0.2 / 0.3 when ``None``.

    Colour is named rarely on purpose: with colour and background in every caption the
    contrastive task is solved by colour alone and the shape (the category) is never learned.
    """
    n = scene["count"]
    use_c = rng.random() < 0.2 if colour is None else colour
    use_s = (rng.random() < 0.3 if size is None else size) and n == 1
    words = ([scene["size"]] if use_s else []) + ([scene["colour"]] if use_c else [])
    words.append(scene["classname"] if n == 1 else plural(scene["classname"]))
    phrase = " ".join(words)
    return f"{_article(phrase)} {phrase}" if n == 1 else f"{_COUNT_WORD[n]} {phrase}"


def _dedup(caps: list[str]) -> list[str]:
    out: list[str] = []
    for c in caps:
        if c not in out:
            out.append(c)
    return out


def captions_for(scene: dict, style: str, rng: np.random.Generator, extra: dict, n: int = 5,
                 corruption: str | None = None) -> list[str]:
    """``n`` distinct captions describing ``scene`` rendered in ``style``.

    Photo styles: the first is "a photo of ...", the second names colour, size or count and the
    background, the third colour, size or count and the position; the rest are drawn at random.
    """
    name, pl, cnt = scene["classname"], plural(scene["classname"]), scene["count"]
    pos, bg = scene["position"], scene["background"]
    has_colour = style not in ("sketch", "palette", "silhouette")

    def S() -> str:
        return _subject(scene, rng, colour=None if has_colour else False)

    where = _where(pos) if cnt == 1 else "in the picture"
    if style == "sketch":
        pool = [f"a sketch of {S()}.", f"a drawing of {S()}.", f"a pencil sketch of {S()} {where}.",
                f"a black and white drawing of {S()}.", f"a line drawing of {S()}.", f"an outline of {S()}."]
    elif style in ("texture", "pixel", "cartoon", "palette", "silhouette", "halftone", "warp"):
        head = {"texture": [f"a photo of a {extra.get('pattern', 'patterned')} {name}.",
                            f"{S()} with a {extra.get('pattern', 'patterned')} pattern.",
                            f"a textured {name} on a patterned background."],
                "pixel": [f"a pixel art of {S()}.", f"a pixel art {name}.", f"an 8-bit picture of {S()}."],
                "cartoon": [f"a cartoon of {S()}.", f"a cartoon {name} with a black outline.",
                            f"a clip art of {S()}."],
                "palette": [f"a false colour image of {S()}.", f"{S()} in strange colours.",
                            f"a posterised picture of {S()}."],
                "silhouette": [f"a silhouette of {S()}.", f"a dark {name} shape.", f"the shadow of {S()}."],
                "halftone": [f"a halftone print of {S()}.", f"a dotted print of {S()}.", f"a newspaper photo of {S()}."],
                "warp": [f"a distorted photo of {S()}.", f"{S()} seen through wavy glass.",
                         f"a warped picture of {S()}."]}[style]
        pool = head + [f"{S()} {where}.", f"an image of {S()}.", f"a picture of {S()}."]
    else:
        first = f"a photo of {S()}."
        if corruption is not None:
            adj = {"noise": "noisy", "blur": "blurry", "contrast": "low contrast", "jpeg": "jpeg compressed"}
            first = f"a {adj[corruption]} photo of {S()}."
        full = _subject(scene, rng, colour=True, size=True)
        fixed = [first, f"{full} on a {bg} background.", f"{_subject(scene, rng, colour=False, size=True)} {where}."]
        pool = fixed + [f"a picture of {S()}.", f"an image of {S()}.", f"a {bg} background with {S()}.", f"{S()}.",
                        f"there is {S()} {where}." if cnt == 1 else f"there are {S()} {where}.",
                        f"the {name} is {scene['colour']}." if cnt == 1 else f"the {pl} are {scene['colour']}."]
        rest = [pool[i] for i in rng.permutation(np.arange(3, len(pool)))]
        return _dedup(fixed + rest)[:n]
    rest = [pool[i] for i in rng.permutation(np.arange(1, len(pool)))]
    out = _dedup([pool[0]] + rest)
    return out[:n]


def make_sample(seed: int, key: str, index: int, image_size: int = 48, ranges: SceneRanges = SceneRanges(),
                style: str = "photo", hard: tuple[str, ...] = (), corruption: tuple[str, int] | None = None,
                draw_objects: bool = True, n_captions: int = 5, label: int | None = None) -> Sample:
    """Generate sample ``index`` of split ``key``.

    Args:
        seed: world seed; key: split key (different keys give independent streams).
        image_size: side ``S`` of the square image.
        ranges: scene parameter ranges; style: one of :data:`STYLES`.
        hard: hardness factors (subset of :data:`HARDNESS`) for adversarial candidates.
        corruption: ``(kind, severity)`` applied after rendering, or ``None``.
        draw_objects: ``False`` renders the same sample without its objects (tests).
        n_captions: captions per image; label: force the category (balanced splits).

    Returns:
        :class:`Sample` with ``image`` uint8 ``(S, S, 3)``.
    """
    rng = sample_rng(seed, key, index)
    scene = _sample_scene(rng, ranges, image_size, hard, label)
    cap_rng = np.random.default_rng(rng.integers(2 ** 63))
    rend_rng = np.random.default_rng(rng.integers(2 ** 63))
    corr_rng = np.random.default_rng(rng.integers(2 ** 63))
    img, extra = _render(rend_rng, scene, style, image_size, ranges, draw_objects, hard)
    img = np.clip(np.round(img), 0, 255).astype(np.uint8)
    if corruption is not None:
        img = R.corrupt(img, corruption[0], corruption[1], corr_rng)
    caps = captions_for(scene, style, cap_rng, extra, n_captions, corruption[0] if corruption else None)
    meta = {k: scene[k] for k in ("classname", "count", "size", "colour", "background", "position")}
    meta.update(style=style, hard=list(hard), objects=[[round(v, 3) for v in o] for o in scene["objects"]])
    if corruption is not None:
        meta.update(corruption=corruption[0], severity=int(corruption[1]))
    meta.update(extra)
    return Sample(img, scene["label"], caps, meta)


def sample_sdf(seed: int, key: str, index: int, image_size: int = 48, ranges: SceneRanges = SceneRanges(),
               hard: tuple[str, ...] = (), label: int | None = None) -> np.ndarray:
    """Pixel SDF ``(S, S)`` of the objects of sample ``index`` of ``key`` (negative inside, no wobble)."""
    rng = sample_rng(seed, key, index)
    return _object_fields(_sample_scene(rng, ranges, image_size, hard, label), image_size)[0]
