"""Batched training augmentations for contrastive training (torch, per-sample random parameters).

Presets (:data:`AUGMENTATIONS`): ``none``, ``light`` (crop + flip), ``heavy`` (below); ``flip=False`` turns
the horizontal flip off (handwriting, text). The embedded world's *reward* model is trained with heavy augmentation: random resized crop + flip, colour jitter
(hue rotation, saturation down to grayscale, brightness, mild contrast), inversion, edge maps
(Sobel magnitude: light edges on a dark ground, or inverted, dark on light) and Gaussian noise:
generic image operations, the analogue of the web's variety seen by a large CLIP.  Held out on
purpose, so that its robustness on the test shifts comes from generalisation: the sketch
renderer's strokes (line width, jitter, paper), blur, JPEG, strong contrast loss, pixel art,
textures, false colour / posterisation, cartoon outlines, clutter and occlusion.  The *policy* and *filter* models see clean images (``"none"``).

All functions take and return float images ``(B, 3, H, W)`` in ``[0, 1]`` and draw their random
numbers from an explicit ``torch.Generator`` (deterministic).
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F

__all__ = ["augment_batch", "AUGMENTATIONS", "PRESET_HELP"]

AUGMENTATIONS = ("none", "light", "heavy")

#: what each preset does (``rlcf train-clip --help``); :func:`augment_batch` is the code
PRESET_HELP = {
    "none": "clean images",
    "light": "random resized crop (area 0.6-1, reflection padding) + horizontal flip (p 0.5; --no-flip: none)",
    "heavy": "light, then colour jitter (p 0.8: hue rotation, saturation 0.3-1.4 or grayscale (p 0.2), brightness "
             "0.7-1.3, contrast 0.75-1.25), edge map (p 0.25), inversion (p 0.5 after an edge map, else 0.1), "
             "Gaussian noise (p 0.3, sigma up to 0.15); no rotation, blur or JPEG",
}


def _u(g: torch.Generator, n: int, lo: float, hi: float) -> torch.Tensor:
    return lo + (hi - lo) * torch.rand(n, generator=g)


def random_resized_crop(x: torch.Tensor, g: torch.Generator, scale: tuple[float, float] = (0.6, 1.0),
                        flip: bool = True) -> torch.Tensor:
    """Crop a random square of area ``scale`` x image, resize back, flip half.  ``(B,3,H,W)``."""
    b = x.shape[0]
    s = torch.sqrt(_u(g, b, *scale))
    tx = (1 - s) * _u(g, b, -1, 1)
    ty = (1 - s) * _u(g, b, -1, 1)
    sign = torch.where(torch.rand(b, generator=g) < 0.5, -1.0, 1.0)   # drawn either way: same stream
    sx = s * sign if flip else s
    theta = torch.zeros(b, 2, 3)
    theta[:, 0, 0], theta[:, 0, 2] = sx, tx
    theta[:, 1, 1], theta[:, 1, 2] = s, ty
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="reflection", align_corners=False)


def colour_jitter(x: torch.Tensor, g: torch.Generator, p_gray: float = 0.2) -> torch.Tensor:
    """Hue rotation, saturation (grayscale with ``p_gray``), brightness, mild contrast."""
    b = x.shape[0]
    ang = _u(g, b, 0, 2 * math.pi)
    # rotation about the gray axis (1,1,1)/sqrt(3): Rodrigues formula
    k = torch.full((3,), 1 / math.sqrt(3))
    kk = torch.outer(k, k)
    kx = torch.tensor([[0, -k[2], k[1]], [k[2], 0, -k[0]], [-k[1], k[0], 0]])
    c, s = torch.cos(ang)[:, None, None], torch.sin(ang)[:, None, None]
    rot = c * torch.eye(3) + s * kx + (1 - c) * kk  # (B,3,3)
    x = torch.einsum("bij,bjhw->bihw", rot, x)
    gray = (0.299 * x[:, 0] + 0.587 * x[:, 1] + 0.114 * x[:, 2])[:, None]
    sat = _u(g, b, 0.3, 1.4)
    sat = torch.where(torch.rand(b, generator=g) < p_gray, torch.zeros_like(sat), sat)[:, None, None, None]
    x = gray + (x - gray) * sat
    x = x * _u(g, b, 0.7, 1.3)[:, None, None, None]
    m = x.mean(dim=(1, 2, 3), keepdim=True)
    x = m + (x - m) * _u(g, b, 0.75, 1.25)[:, None, None, None]
    return x.clamp(0, 1)


def edge_map(x: torch.Tensor, g: torch.Generator) -> torch.Tensor:
    """Sobel gradient magnitude of the luminance as light edges (random tint) on a dark ground."""
    gray = (0.299 * x[:, 0] + 0.587 * x[:, 1] + 0.114 * x[:, 2])[:, None]
    kx = torch.tensor([[-1.0, 0, 1], [-2, 0, 2], [-1, 0, 1]])[None, None] / 4
    gx = F.conv2d(F.pad(gray, (1, 1, 1, 1), mode="replicate"), kx)
    gy = F.conv2d(F.pad(gray, (1, 1, 1, 1), mode="replicate"), kx.transpose(2, 3))
    mag = torch.sqrt(gx ** 2 + gy ** 2)
    mag = mag / mag.amax(dim=(2, 3), keepdim=True).clamp_min(1e-3)
    tint = _u(g, 3 * x.shape[0], 0.5, 1.0).view(-1, 3, 1, 1)
    return (mag * tint).clamp(0, 1)


def augment_batch(x: torch.Tensor, g: torch.Generator, kind: str = "heavy", flip: bool = True,
                  crop_scale: tuple[float, float] = (0.6, 1.0)) -> torch.Tensor:
    """Augment a batch ``(B, 3, H, W)`` in ``[0, 1]``; ``kind`` in :data:`AUGMENTATIONS`.

    ``light``: crop + flip.  ``heavy``: crop + flip, colour jitter (p 0.8), then
    edge map (p 0.25), inversion (p 0.5 after an edge map, else 0.1), then Gaussian noise (p 0.3, sigma up to 0.15).
    ``flip=False``: no horizontal flip (the crop's draws are the same). ``crop_scale``: the crop's area range
    (fraction of the image).
    """
    if kind == "none":
        return x
    if kind not in AUGMENTATIONS:
        raise ValueError(f"unknown augmentation '{kind}', expected one of {AUGMENTATIONS}")
    x = random_resized_crop(x, g, scale=crop_scale, flip=flip)
    if kind == "light":
        return x
    b = x.shape[0]
    sel = torch.rand(b, generator=g) < 0.8
    x = torch.where(sel[:, None, None, None], colour_jitter(x, g), x)
    edges = torch.rand(b, generator=g) < 0.25
    x = torch.where(edges[:, None, None, None], edge_map(x, g), x)
    inv = torch.rand(b, generator=g) < torch.where(edges, 0.5, 0.1)
    x = torch.where(inv[:, None, None, None], 1 - x, x)
    sigma = _u(g, b, 0.0, 0.15) * (torch.rand(b, generator=g) < 0.3)
    x = x + sigma[:, None, None, None] * torch.randn(x.shape, generator=g)
    return x.clamp(0, 1)
