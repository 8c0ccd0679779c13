"""Test-time views (TPT / RLCF): the clean view plus random-resized-crop + flip views.

View 0 = resize (bicubic) + centre crop; views 1..V-1 = ``RandomResizedCrop`` + horizontal flip,
optionally followed by torchvision's ``AugMix`` (official: only for the fine-grained sets).
"""
from __future__ import annotations

from typing import Sequence

import torch
from PIL import Image
from torch import Tensor
from torchvision import transforms as T
from torchvision.transforms import InterpolationMode

__all__ = ["ViewTransform", "OPENAI_MEAN", "OPENAI_STD"]

OPENAI_MEAN = (0.48145466, 0.4578275, 0.40821073)
OPENAI_STD = (0.26862954, 0.26130258, 0.27577711)


class ViewTransform:
    """``PIL.Image -> [V, 3, R, R]`` float tensor of normalised views.

    Args:
        n_views: total number of views V (official 64; 1 = only the clean view).
        resolution: output size R (the policy model's input size, 224 for ViT-B/16).
        mean, std: normalisation (CLIP's by default).
        augmix: add torchvision ``AugMix(severity=1, all_ops=False)`` to the augmented views.
        scale: ``RandomResizedCrop`` scale range (torchvision default (0.08, 1.0), as the official code).

    Calling it with ``seed=`` makes the augmented views a pure function of ``(image, seed)``
    (the runner passes the sample index, so resumed and sharded runs see the same views).
    """

    def __init__(self, n_views: int = 64, resolution: int = 224, mean: Sequence[float] = OPENAI_MEAN,
                 std: Sequence[float] = OPENAI_STD, augmix: bool = False,
                 scale: tuple[float, float] = (0.08, 1.0)) -> None:
        if n_views < 1:
            raise ValueError(f"n_views must be >= 1, got {n_views}")
        self.n_views = n_views
        self.base = T.Compose([T.Resize(resolution, interpolation=InterpolationMode.BICUBIC),
                               T.CenterCrop(resolution)])
        self.crop = T.RandomResizedCrop(resolution, scale=scale, interpolation=InterpolationMode.BILINEAR)
        self.flip = T.RandomHorizontalFlip()
        self.augmix = T.AugMix(severity=1, all_ops=False) if augmix else None
        self.to_tensor = T.Compose([T.ToTensor(), T.Normalize(mean, std)])

    def augmented(self, img: Image.Image) -> Tensor:
        x = self.flip(self.crop(img))
        if self.augmix is not None:
            x = self.augmix(x)
        return self.to_tensor(x)

    def __call__(self, img: Image.Image, seed: int | None = None) -> Tensor:
        if not isinstance(img, Image.Image):
            raise TypeError(f"ViewTransform expects a PIL.Image, got {type(img).__name__}")
        img = img.convert("RGB")
        views = [self.to_tensor(self.base(img))]
        if self.n_views > 1:
            with torch.random.fork_rng(devices=[], enabled=seed is not None):
                if seed is not None:
                    torch.manual_seed(seed)
                views += [self.augmented(img) for _ in range(self.n_views - 1)]
        return torch.stack(views)
