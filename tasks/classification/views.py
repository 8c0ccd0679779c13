"""Test-time views (TPT / RLCF): the clean view plus random-resized-crop + flip views.

View 0 = resize (bicubic) + centre crop; views 1..V-1 = ``RandomResizedCrop`` + horizontal flip,
optionally followed by AugMix. The official AugMix (TPT's ``augmix_ops``, :mod:`.augmix`) is the
default; ``augmix="torchvision"`` uses ``torchvision.transforms.AugMix`` (weaker at severity 1, see
:mod:`.augmix`). Official rule: AugMix only for the fine-grained sets (TPT / RLCF), for every set
with C-TPT's ``--I_augmix``, and for A/V/R/K in TDA.
"""
from __future__ import annotations

from typing import Any, Sequence

import numpy as np
import torch
from PIL import Image
from torch import Tensor
from torchvision import transforms as T
from torchvision.transforms import InterpolationMode
from torchvision.transforms.functional import to_pil_image

from .augmix import augmix_view

__all__ = ["ViewTransform", "OPENAI_MEAN", "OPENAI_STD", "to_pil"]

OPENAI_MEAN = (0.48145466, 0.4578275, 0.40821073)
OPENAI_STD = (0.26862954, 0.26130258, 0.27577711)
AUGMIX_KINDS = (False, True, "official", "torchvision")


def to_pil(img: Any) -> Image.Image:
    """A PIL image, a ``[3, H, W]`` / ``[H, W]`` tensor (uint8, or float in [0, 1]) or an ``[H, W(, 3)]``
    numpy array (uint8, or float in [0, 1]) -> RGB ``PIL.Image``."""
    if isinstance(img, Image.Image):
        return img.convert("RGB")
    if isinstance(img, np.ndarray):
        arr = img
        if arr.dtype != np.uint8:
            if not np.issubdtype(arr.dtype, np.floating):
                raise TypeError(f"numpy images must be uint8 or float in [0, 1], got {arr.dtype}")
            arr = (np.clip(arr, 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)
        if arr.ndim not in (2, 3):
            raise ValueError(f"numpy images must be [H, W] or [H, W, C], got shape {arr.shape}")
        return Image.fromarray(arr).convert("RGB")
    if isinstance(img, Tensor):
        if img.dim() not in (2, 3):
            raise ValueError(f"tensor images must be [C, H, W] or [H, W], got shape {tuple(img.shape)}")
        if img.is_floating_point():
            img = img.clamp(0.0, 1.0)
        elif img.dtype != torch.uint8:
            raise TypeError(f"tensor images must be uint8 or float in [0, 1], got {img.dtype}")
        return to_pil_image(img.cpu()).convert("RGB")
    raise TypeError(f"ViewTransform expects a PIL.Image, a tensor or a numpy array, got {type(img).__name__}")


class ViewTransform:
    """Image -> ``[V, 3, R, R]`` float tensor of normalised views.

    Args:
        n_views: total number of views V (official 64; 1 = only the clean view).
        resolution: output size R (the policy model's input size, 224 for ViT-B/16).
        mean, std: normalisation (CLIP's by default).
        augmix: ``False``; ``True`` / ``"official"`` (TPT's op set, the official views);
            ``"torchvision"`` (``T.AugMix(severity=1, all_ops=False)``).
        scale: ``RandomResizedCrop`` scale range (torchvision default (0.08, 1.0), as the official code).
        flip: random horizontal flip of the augmented views (official on; off for text or handwriting).

    Takes a ``PIL.Image``, a tensor or a numpy array (:func:`to_pil`). Calling it with ``seed=``
    makes the augmented views a pure function of ``(image, seed)`` (the runner passes the sample
    index, so resumed and sharded runs see the same views).
    """

    def __init__(self, n_views: int = 64, resolution: int = 224, mean: Sequence[float] = OPENAI_MEAN,
                 std: Sequence[float] = OPENAI_STD, augmix: bool | str = False,
                 scale: tuple[float, float] = (0.08, 1.0), flip: bool = True) -> None:
        if n_views < 1:
            raise ValueError(f"n_views must be >= 1, got {n_views}")
        if augmix not in AUGMIX_KINDS:
            raise ValueError(f"augmix must be one of {AUGMIX_KINDS}, got {augmix!r}")
        if not 0.0 < scale[0] <= scale[1] <= 1.0:
            raise ValueError(f"scale must satisfy 0 < min <= max <= 1, got {scale}")
        self.n_views = n_views
        self.base = T.Compose([T.Resize(resolution, interpolation=InterpolationMode.BICUBIC),
                               T.CenterCrop(resolution)])
        self.crop = T.RandomResizedCrop(resolution, scale=tuple(scale), interpolation=InterpolationMode.BILINEAR)
        self.flip = T.RandomHorizontalFlip() if flip else None
        self.augmix = "official" if augmix is True else (augmix or None)
        self.tv_augmix = T.AugMix(severity=1, all_ops=False) if self.augmix == "torchvision" else None
        self.to_tensor = T.Compose([T.ToTensor(), T.Normalize(mean, std)])

    def augmented(self, img: Image.Image, rng: np.random.Generator) -> Tensor:
        x = self.crop(img)
        if self.flip is not None:
            x = self.flip(x)
        if self.augmix == "official":
            return augmix_view(x, self.to_tensor, rng)
        if self.tv_augmix is not None:
            x = self.tv_augmix(x)
        return self.to_tensor(x)

    def __call__(self, img: Any, seed: int | None = None) -> Tensor:
        img = to_pil(img)
        views = [self.to_tensor(self.base(img))]
        if self.n_views > 1:
            rng = np.random.default_rng(seed)
            with torch.random.fork_rng(devices=[], enabled=seed is not None):
                if seed is not None:
                    torch.manual_seed(seed)
                views += [self.augmented(img, rng) for _ in range(self.n_views - 1)]
        return torch.stack(views)
