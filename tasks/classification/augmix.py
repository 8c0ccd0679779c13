"""AugMix as TPT, C-TPT, TDA and RLCF use it (Hendrycks et al.'s operations at severity 1).

The official views (``data/augmix_ops.py`` + ``augmix`` in ``data/datautils.py`` of azshue/TPT; the
same in RLCF's ``TPT/``, C-TPT and TDA) differ from ``torchvision.transforms.AugMix``:

* ops, in this order: autocontrast, equalize, posterize, rotate, solarize, shear_x, shear_y,
  translate_x, translate_y (no colour/contrast/brightness/sharpness);
* every parametrised op draws its own level ``u ~ U(0.1, severity)`` with ``severity = 1``, so:
  posterize keeps 4 bits (``4 - int(4u / 10)``); rotate ``int(30u / 10)`` in {0, 1, 2} degrees;
  solarize threshold ``256 - int(256u / 10)`` in [231, 254]; shear ``0.3u / 10`` < 0.03;
  translate ``int((size / 3) * u / 10)`` pixels (0-7 at 224); rotate, shear and translate flip their
  sign with probability 1/2 and resample bilinearly (black fill);
* per view: 3 chains of 1-3 random ops on the PIL crop, chain weights ``Dirichlet(1, 1, 1)``, mix
  weight ``m ~ Beta(1, 1)``, and the mix happens *after* ``ToTensor + Normalize``:
  ``m * pre(crop) + (1 - m) * sum_i w_i * pre(chain_i(crop))``.

torchvision's ``AugMix(severity=1)`` instead draws the magnitude bin with ``randint(severity)``,
i.e. always bin 0: every geometric op has magnitude 0 and solarize threshold 255, which makes its
views much weaker (``tests/test_augmix.py`` pins both facts).

The official code draws from numpy's global RNG inside DataLoader workers; here every draw comes
from the ``numpy.random.Generator`` passed in, so views are a pure function of the sample's seed.
The official ops hard-code ``IMAGE_SIZE = 224`` for the translate cap and the affine output size;
here both follow the crop's size (identical at 224).
"""
from __future__ import annotations

from typing import Callable, Sequence

import numpy as np
import torch
from PIL import Image, ImageOps
from torch import Tensor

__all__ = ["OPS", "augmix_view", "apply_op"]

SEVERITY = 1


def _level(rng: np.random.Generator, severity: float) -> float:
    return float(rng.uniform(0.1, severity))


def _int_param(level: float, maxval: float) -> int:
    return int(level * maxval / 10)


def _float_param(level: float, maxval: float) -> float:
    return float(level) * maxval / 10.0


def _signed(rng: np.random.Generator, v: float) -> float:
    return -v if rng.uniform() > 0.5 else v


def autocontrast(img: Image.Image, rng: np.random.Generator, severity: float) -> Image.Image:
    return ImageOps.autocontrast(img)


def equalize(img: Image.Image, rng: np.random.Generator, severity: float) -> Image.Image:
    return ImageOps.equalize(img)


def posterize(img: Image.Image, rng: np.random.Generator, severity: float) -> Image.Image:
    return ImageOps.posterize(img, 4 - _int_param(_level(rng, severity), 4))


def rotate(img: Image.Image, rng: np.random.Generator, severity: float) -> Image.Image:
    deg = _signed(rng, _int_param(_level(rng, severity), 30))
    return img.rotate(deg, resample=Image.BILINEAR)


def solarize(img: Image.Image, rng: np.random.Generator, severity: float) -> Image.Image:
    return ImageOps.solarize(img, 256 - _int_param(_level(rng, severity), 256))


def _affine(img: Image.Image, coeffs: tuple[float, ...]) -> Image.Image:
    return img.transform(img.size, Image.AFFINE, coeffs, resample=Image.BILINEAR)


def shear_x(img: Image.Image, rng: np.random.Generator, severity: float) -> Image.Image:
    s = _signed(rng, _float_param(_level(rng, severity), 0.3))
    return _affine(img, (1, s, 0, 0, 1, 0))


def shear_y(img: Image.Image, rng: np.random.Generator, severity: float) -> Image.Image:
    s = _signed(rng, _float_param(_level(rng, severity), 0.3))
    return _affine(img, (1, 0, 0, s, 1, 0))


def translate_x(img: Image.Image, rng: np.random.Generator, severity: float) -> Image.Image:
    t = _signed(rng, _int_param(_level(rng, severity), img.size[0] / 3))
    return _affine(img, (1, 0, t, 0, 1, 0))


def translate_y(img: Image.Image, rng: np.random.Generator, severity: float) -> Image.Image:
    t = _signed(rng, _int_param(_level(rng, severity), img.size[1] / 3))
    return _affine(img, (1, 0, 0, 0, 1, t))


Op = Callable[[Image.Image, np.random.Generator, float], Image.Image]
#: The official ``augmentations`` list, in its order.
OPS: tuple[Op, ...] = (autocontrast, equalize, posterize, rotate, solarize, shear_x, shear_y, translate_x,
                       translate_y)


def apply_op(name: str, img: Image.Image, rng: np.random.Generator, severity: float = SEVERITY) -> Image.Image:
    """Apply one official op by name (``"rotate"``, ...) to a PIL image."""
    ops = {op.__name__: op for op in OPS}
    if name not in ops:
        raise KeyError(f"unknown AugMix op '{name}'; official ops: {list(ops)}")
    return ops[name](img, rng, severity)


def augmix_view(crop: Image.Image, preprocess: Callable[[Image.Image], Tensor], rng: np.random.Generator,
                ops: Sequence[Op] = OPS, severity: float = SEVERITY, width: int = 3) -> Tensor:
    """One official AugMix view of an already cropped and flipped PIL image.

    Args:
        crop: the ``RandomResizedCrop`` + flip output (RGB).
        preprocess: ``ToTensor + Normalize`` (PIL -> ``[3, H, W]``).
        rng: the source of every draw.
        ops, severity, width: the op list (official :data:`OPS`), severity (1) and chain count (3).
    Returns:
        ``[3, H, W]`` float tensor ``m * pre(crop) + (1 - m) * sum_i w_i * pre(chain_i(crop))``.
    """
    x = preprocess(crop)
    if not ops:
        return x
    w = rng.dirichlet([1.0] * width).astype(np.float32)
    m = float(np.float32(rng.beta(1.0, 1.0)))
    mix = torch.zeros_like(x)
    for i in range(width):
        aug = crop.copy()
        for _ in range(int(rng.integers(1, 4))):
            aug = ops[int(rng.integers(len(ops)))](aug, rng, severity)
        mix += float(w[i]) * preprocess(aug)
    return m * x + (1.0 - m) * mix
