"""Signed-distance shapes of the embedded world.

Every category is a *shape* built from primitives (discs, boxes, polygons, capsules), never a
colour: the ``sketch`` split draws outlines only, so a category must survive the loss of its
fill.  Shapes are signed distance functions (SDFs) in a unit frame (``y`` up, the object fits
roughly in ``[-1, 1]^2``): negative inside, positive outside.  Rendering scales them to pixels,
so anti-aliased fills (``clip(0.5 - d)``) and outlines (``clip(w/2 + 0.5 - |d|)``) come from the
same function.

All functions take ``x, y`` as float arrays of any (identical) shape and return an array of that
shape.
"""
from __future__ import annotations

from typing import Callable

import numpy as np

Array = np.ndarray
SDF = Callable[[Array, Array], Array]

__all__ = ["CLASSNAMES", "SHAPES", "PLURALS", "shape_sdf", "plural"]


# ----------------------------------------------------------------------------- primitives
def circle(x: Array, y: Array, cx: float, cy: float, r: float) -> Array:
    return np.hypot(x - cx, y - cy) - r


def box(x: Array, y: Array, cx: float, cy: float, hw: float, hh: float) -> Array:
    dx = np.abs(x - cx) - hw
    dy = np.abs(y - cy) - hh
    outside = np.hypot(np.maximum(dx, 0.0), np.maximum(dy, 0.0))
    return outside + np.minimum(np.maximum(dx, dy), 0.0)


def capsule(x: Array, y: Array, ax: float, ay: float, bx: float, by: float, r: float) -> Array:
    px, py = x - ax, y - ay
    vx, vy = bx - ax, by - ay
    h = np.clip((px * vx + py * vy) / (vx * vx + vy * vy), 0.0, 1.0)
    return np.hypot(px - vx * h, py - vy * h) - r


def polygon(x: Array, y: Array, verts: list[tuple[float, float]]) -> Array:
    """Exact SDF of a simple polygon (even-odd rule for the sign)."""
    v = np.asarray(verts, dtype=np.float64)
    d2 = np.full(x.shape, np.inf)
    inside = np.zeros(x.shape, dtype=bool)
    n = len(v)
    for i in range(n):
        (ax, ay), (bx, by) = v[i], v[(i + 1) % n]
        ex, ey = bx - ax, by - ay
        wx, wy = x - ax, y - ay
        h = np.clip((wx * ex + wy * ey) / (ex * ex + ey * ey), 0.0, 1.0)
        d2 = np.minimum(d2, (wx - ex * h) ** 2 + (wy - ey * h) ** 2)
        crosses = (ay > y) != (by > y)
        xint = ax + (y - ay) * ex / np.where(ey == 0, 1e-12, ey)
        inside ^= crosses & (x < xint)
    return np.where(inside, -1.0, 1.0) * np.sqrt(d2)


def regular(n: int, r: float = 0.95, phase: float = np.pi / 2) -> list[tuple[float, float]]:
    a = phase + 2 * np.pi * np.arange(n) / n
    return [(float(r * np.cos(t)), float(r * np.sin(t))) for t in a]


def star_verts(points: int = 5, r_out: float = 1.0, r_in: float = 0.42) -> list[tuple[float, float]]:
    out = []
    for k in range(2 * points):
        t = np.pi / 2 + np.pi * k / points
        r = r_out if k % 2 == 0 else r_in
        out.append((float(r * np.cos(t)), float(r * np.sin(t))))
    return out


def union(*ds: Array) -> Array:
    return np.minimum.reduce(ds)


def subtract(a: Array, b: Array) -> Array:
    return np.maximum(a, -b)


def annulus(d: Array, t: float) -> Array:
    return np.abs(d) - t


# ----------------------------------------------------------------------------- categories
def _circle(x, y):
    return circle(x, y, 0, 0, 0.9)


def _ring(x, y):
    return annulus(circle(x, y, 0, 0, 0.72), 0.2)


def _square(x, y):
    return box(x, y, 0, 0, 0.78, 0.78)


def _frame(x, y):
    return annulus(box(x, y, 0, 0, 0.7, 0.7), 0.16)


def _triangle(x, y):
    return polygon(x, y, [(0, 0.95), (0.95, -0.75), (-0.95, -0.75)])


def _diamond(x, y):
    return polygon(x, y, [(0, 1.0), (0.62, 0), (0, -1.0), (-0.62, 0)])


def _pentagon(x, y):
    return polygon(x, y, regular(5))


def _hexagon(x, y):
    return polygon(x, y, regular(6, phase=0.0))


def _star(x, y):
    return polygon(x, y, star_verts())


def _cross(x, y):
    return union(box(x, y, 0, 0, 0.9, 0.26), box(x, y, 0, 0, 0.26, 0.9))


def _arrow(x, y):
    return union(box(x, y, -0.3, 0, 0.6, 0.18), polygon(x, y, [(0.15, 0.62), (0.95, 0), (0.15, -0.62)]))


def _heart(x, y):
    lobes = union(circle(x, y, -0.43, 0.35, 0.47), circle(x, y, 0.43, 0.35, 0.47))
    return union(lobes, polygon(x, y, [(-0.88, 0.22), (0, 0.45), (0.88, 0.22), (0, -0.95)]))


def _crescent(x, y):
    return subtract(circle(x, y, 0, 0, 0.9), circle(x, y, 0.42, 0.18, 0.72))


def _house(x, y):
    return union(box(x, y, 0, -0.4, 0.62, 0.52), polygon(x, y, [(-0.9, 0.1), (0.9, 0.1), (0, 0.95)]))


def _tree(x, y):
    crown = polygon(x, y, [(0, 1.0), (0.75, -0.45), (-0.75, -0.45)])
    return union(crown, box(x, y, 0, -0.7, 0.16, 0.3))


def _hourglass(x, y):
    return union(polygon(x, y, [(-0.7, 0.95), (0.7, 0.95), (0, 0)]), polygon(x, y, [(-0.7, -0.95), (0.7, -0.95), (0, 0)]))


def _bowtie(x, y):
    return union(polygon(x, y, [(-0.95, 0.7), (-0.95, -0.7), (0, 0)]), polygon(x, y, [(0.95, 0.7), (0.95, -0.7), (0, 0)]))


def _mushroom(x, y):
    cap = np.maximum(circle(x, y, 0, 0.0, 0.95), -(y - 0.0))
    return union(cap, box(x, y, 0, -0.5, 0.22, 0.45))


def _cup(x, y):
    body = box(x, y, -0.2, -0.05, 0.55, 0.75)
    handle = annulus(circle(x, y, 0.45, 0.0, 0.35), 0.11)
    return union(body, handle)


def _bolt(x, y):
    return polygon(x, y, [(0.15, 1.0), (-0.6, -0.05), (-0.05, -0.05), (-0.3, -1.0), (0.6, 0.15), (0.05, 0.15)])


def _flag(x, y):
    return union(box(x, y, -0.7, 0, 0.09, 0.95), box(x, y, 0.05, 0.45, 0.72, 0.45))


def _fish(x, y):
    body = np.hypot((x + 0.15) / 0.7, y / 0.45) - 1.0
    body = body * 0.45
    return union(body, polygon(x, y, [(0.45, 0), (1.0, 0.5), (1.0, -0.5)]))


def _boat(x, y):
    hull = polygon(x, y, [(-0.95, -0.35), (0.95, -0.35), (0.6, -0.85), (-0.6, -0.85)])
    sail = polygon(x, y, [(-0.05, 0.95), (-0.05, -0.2), (0.7, -0.2)])
    return union(hull, sail, box(x, y, -0.12, 0.3, 0.06, 0.65))


def _car(x, y):
    body = box(x, y, 0, -0.2, 0.95, 0.3)
    cabin = box(x, y, -0.05, 0.3, 0.5, 0.25)
    return union(body, cabin, circle(x, y, -0.55, -0.6, 0.25), circle(x, y, 0.55, -0.6, 0.25))


def _lollipop(x, y):
    return union(circle(x, y, 0, 0.4, 0.55), box(x, y, 0, -0.5, 0.07, 0.5))


def _dumbbell(x, y):
    return union(circle(x, y, -0.65, 0, 0.33), circle(x, y, 0.65, 0, 0.33), box(x, y, 0, 0, 0.6, 0.1))


def _chevron(x, y):
    return polygon(x, y, [(-0.95, -0.5), (0, 0.55), (0.95, -0.5), (0.6, -0.8), (0, -0.1), (-0.6, -0.8)])


def _ladder(x, y):
    rails = union(box(x, y, -0.5, 0, 0.1, 0.95), box(x, y, 0.5, 0, 0.1, 0.95))
    rungs = union(*[box(x, y, 0, c, 0.5, 0.07) for c in (-0.55, 0.0, 0.55)])
    return union(rails, rungs)


def _window(x, y):
    return union(annulus(box(x, y, 0, 0, 0.78, 0.78), 0.1), box(x, y, 0, 0, 0.78, 0.07), box(x, y, 0, 0, 0.07, 0.78))


def _key(x, y):
    head = annulus(circle(x, y, -0.55, 0, 0.32), 0.12)
    shaft = box(x, y, 0.2, 0, 0.55, 0.08)
    teeth = union(box(x, y, 0.55, -0.2, 0.06, 0.16), box(x, y, 0.8, -0.2, 0.06, 0.16))
    return union(head, shaft, teeth)


def _bone(x, y):
    ends = [circle(x, y, sx * 0.72, sy * 0.18, 0.22) for sx in (-1, 1) for sy in (-1, 1)]
    return union(capsule(x, y, -0.7, 0, 0.7, 0, 0.14), *ends)


def _bullseye(x, y):
    return union(annulus(circle(x, y, 0, 0, 0.78), 0.14), circle(x, y, 0, 0, 0.28))


def _flower(x, y):
    petals = [circle(x, y, 0.6 * np.cos(t), 0.6 * np.sin(t), 0.3) for t in np.pi / 2 + 2 * np.pi * np.arange(6) / 6]
    return union(circle(x, y, 0, 0, 0.3), *petals)


SHAPES: dict[str, SDF] = {
    "circle": _circle, "ring": _ring, "square": _square, "frame": _frame, "triangle": _triangle,
    "diamond": _diamond, "pentagon": _pentagon, "hexagon": _hexagon, "star": _star, "cross": _cross,
    "arrow": _arrow, "heart": _heart, "crescent": _crescent, "house": _house, "tree": _tree,
    "hourglass": _hourglass, "bowtie": _bowtie, "mushroom": _mushroom, "cup": _cup, "bolt": _bolt,
    "flag": _flag, "fish": _fish, "boat": _boat, "car": _car, "lollipop": _lollipop,
    "dumbbell": _dumbbell, "chevron": _chevron, "ladder": _ladder, "window": _window, "key": _key,
    "bone": _bone, "bullseye": _bullseye,
}
CLASSNAMES: list[str] = list(SHAPES)
PLURALS: dict[str, str] = {"cross": "crosses", "fish": "fish", "hourglass": "hourglasses", "bowtie": "bowties"}


def plural(name: str) -> str:
    """English plural of a class name (``"cross" -> "crosses"``)."""
    return PLURALS.get(name, name + "s")


def shape_sdf(name: str, x: Array, y: Array) -> Array:
    """SDF of category ``name`` at unit-frame points ``x, y`` (arrays of equal shape)."""
    return SHAPES[name](x, y)
