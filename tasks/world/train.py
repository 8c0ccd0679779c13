"""Contrastive training of the world's CLIP models and zero-shot evaluation (the world's command line is
``python -m tasks.world``: :mod:`tasks.world.__main__`).

Training is the plain CLIP recipe: one random caption of each image, symmetric InfoNCE
(``open_clip.loss.ClipLoss``) with the learnable temperature, AdamW, linear warm-up then cosine
decay.  Images are held in memory as one ``uint8`` tensor ``(N, 3, H, W)``; captions are
tokenised once to ``(N, K, L)``.  Everything is seeded (``torch.Generator``), so a run on the
same machine and thread count is reproducible.
"""
from __future__ import annotations

import logging
import math
import os
from dataclasses import dataclass
from typing import Callable, Sequence

import torch
from open_clip.constants import OPENAI_DATASET_MEAN, OPENAI_DATASET_STD
from open_clip.loss import ClipLoss
from tqdm.auto import tqdm

from tasks.common.augment import augment_batch

logger = logging.getLogger(__name__)

__all__ = ["TrainConfig", "train_clip", "init_for_short_training", "normalize", "zero_shot_predict",
           "zero_shot_accuracy"]


@dataclass(frozen=True)
class TrainConfig:
    """Hyper-parameters of one contrastive training run.

    ``first_caption_p``: probability of training on an image's first, alt-text-like caption
    ("a photo of a star."); the others are drawn uniformly.  The attribute captions let the
    contrastive loss be solved by colour / background / position shortcuts, so a pure uniform
    draw learns the category (shape) late (dev zero-shot 27 % after 600 steps).

    ``augment_from``: clean images for the first steps, then ``augment``.  From scratch, the
    loss sits on a plateau until the text tower tells the class prompts apart; heavy augmentation
    stretches that plateau (dev: ~1000 steps instead of ~300), so it is switched on after it.
    ``augment_p``: the fraction of each batch that is augmented (the rest stays clean).
    """
    steps: int = 600
    batch_size: int = 128
    lr: float = 1e-3
    weight_decay: float = 0.1
    warmup: int = 50
    seed: int = 0
    augment: str = "none"
    first_caption_p: float = 0.6
    augment_p: float = 1.0
    augment_from: int = 0


def init_for_short_training(model: torch.nn.Module, token_std: float = 1.0) -> int:
    """Re-initialise two open_clip defaults that stall short from-scratch runs; return #BN scales reset.

    * ``ModifiedResNet`` zero-initialises ``bn3.weight`` of every bottleneck (the residual branch
      starts switched off), which suits deep nets trained for long; with one block per stage and a
      few hundred steps the image tower starts almost linear and learning stalls (dev, supervised
      proxy: loss 2.8 vs 1.7 after 150 steps).  Reset to 1.
    * The token embedding is drawn with std 0.02, so at init the class prompts ("a photo of a
      star." / "... ring.") are nearly the same vector and the loss sits on a plateau; std 1
      (``nn.Embedding``'s default) shortens it (dev zero-shot after 300 steps: 15 % -> 35 %).

    Only initial values change; the architecture and the checkpoint format are open_clip's.
    """
    n = 0
    for name, p in model.named_parameters():
        if name.startswith("visual.layer") and name.endswith("bn3.weight"):
            torch.nn.init.ones_(p)
            n += 1
    emb = getattr(model, "token_embedding", None)
    if emb is not None:
        torch.nn.init.normal_(emb.weight, std=token_std)
    return n


def normalize(x: torch.Tensor) -> torch.Tensor:
    """``uint8`` or ``[0, 1]`` float images ``(B, 3, H, W)`` -> CLIP-normalised float ``(B, 3, H, W)``.

    Identical to the open_clip eval transform (``ToTensor`` then ``Normalize``) on images that
    already have the model's input size.
    """
    if x.dtype == torch.uint8:
        x = x.float() / 255.0
    mean = torch.tensor(OPENAI_DATASET_MEAN, dtype=x.dtype, device=x.device).view(1, 3, 1, 1)
    std = torch.tensor(OPENAI_DATASET_STD, dtype=x.dtype, device=x.device).view(1, 3, 1, 1)
    return (x - mean) / std


def _lr_at(step: int, cfg: TrainConfig) -> float:
    if step < cfg.warmup:
        return cfg.lr * (step + 1) / cfg.warmup
    t = (step - cfg.warmup) / max(1, cfg.steps - cfg.warmup)
    return cfg.lr * 0.5 * (1 + math.cos(math.pi * t))


def train_clip(model: torch.nn.Module, images: torch.Tensor, tokens: torch.Tensor, cfg: TrainConfig,
               desc: str = "train", progress: bool = True,
               callback: Callable[[int, float], None] | None = None) -> list[float]:
    """Train ``model`` in place with the CLIP loss.

    Args:
        model: an open_clip ``CLIP`` (returns normalised features and ``logit_scale.exp()``).
        images: ``uint8`` ``(N, 3, H, W)``.
        tokens: ``long`` ``(N, K, L)``: ``K`` tokenised captions per image.
        cfg: hyper-parameters; ``cfg.augment`` selects :func:`augment_batch`.
        callback: called as ``callback(step, loss)`` after every step.

    Returns:
        The loss of every step (``cfg.steps`` floats).
    """
    if images.dtype != torch.uint8 or images.ndim != 4:
        raise ValueError(f"images must be uint8 (N, 3, H, W), got {images.dtype} {tuple(images.shape)}")
    n, k = tokens.shape[0], tokens.shape[1]
    if n != images.shape[0]:
        raise ValueError(f"{images.shape[0]} images but {n} caption rows")
    g = torch.Generator().manual_seed(cfg.seed)
    decay = [p for name, p in model.named_parameters() if p.ndim >= 2 and "embedding" not in name]
    other = [p for name, p in model.named_parameters() if not (p.ndim >= 2 and "embedding" not in name)]
    groups = [{"params": decay, "weight_decay": cfg.weight_decay}, {"params": other, "weight_decay": 0.0}]
    # the fused kernel is ~7x faster on CPU than the per-tensor loop (most of it: the 49408-row token
    # embedding); same update rule
    opt = torch.optim.AdamW(groups, lr=cfg.lr, betas=(0.9, 0.98), eps=1e-6, fused=True)
    model.to(memory_format=torch.channels_last)  # ~25 % faster convolutions on CPU
    loss_fn = ClipLoss()
    model.train()
    losses: list[float] = []
    perm = torch.randperm(n, generator=g)
    pos = 0
    bar = tqdm(range(cfg.steps), desc=desc, disable=not progress, mininterval=2.0,
               position=int(os.environ.get("LOCAL_RANK", 0)))   # one line per torchrun rank
    for step in bar:
        if pos + cfg.batch_size > n:
            perm, pos = torch.randperm(n, generator=g), 0
        idx = perm[pos:pos + cfg.batch_size]
        pos += cfg.batch_size
        cap = torch.randint(1, k, (len(idx),), generator=g) if k > 1 else torch.zeros(len(idx), dtype=torch.long)
        cap = torch.where(torch.rand(len(idx), generator=g) < cfg.first_caption_p, torch.zeros_like(cap), cap)
        x = images[idx].float() / 255.0
        kind = cfg.augment if step >= cfg.augment_from else "none"
        if kind != "none":
            xa = augment_batch(x, g, kind)
            if cfg.augment_p < 1.0:   # the rest of the batch stays clean
                xa = torch.where((torch.rand(len(idx), generator=g) < cfg.augment_p)[:, None, None, None], xa, x)
            x = xa
        x = normalize(x).contiguous(memory_format=torch.channels_last)
        for group in opt.param_groups:
            group["lr"] = _lr_at(step, cfg)
        img_f, txt_f, scale = model(x, tokens[idx, cap])[:3]
        loss = loss_fn(img_f, txt_f, scale)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        with torch.no_grad():
            model.logit_scale.clamp_(0, math.log(100))
        losses.append(float(loss.detach()))
        if callback is not None:
            callback(step, losses[-1])
        if step % 10 == 0:
            bar.set_postfix(loss=f"{sum(losses[-10:]) / len(losses[-10:]):.3f}")
    model.eval()
    return losses


@torch.no_grad()
def zero_shot_predict(model: torch.nn.Module, images: torch.Tensor, text_features: torch.Tensor,
                      batch_size: int = 256) -> torch.Tensor:
    """Predicted labels ``(N,)`` of ``uint8`` images ``(N, 3, H, W)`` against ``text_features`` ``(C, D)``."""
    from rlcf.reward import encode_batched

    model.eval()
    if images.shape[0] == 0:
        return torch.zeros(0, dtype=torch.long)
    f = encode_batched(lambda x: model.encode_image(normalize(x)), images, batch_size)
    return (f @ text_features.T.float()).argmax(-1)


def zero_shot_accuracy(model: torch.nn.Module, tokenizer: Callable, images: torch.Tensor, labels: torch.Tensor,
                       classnames: Sequence[str], templates: Sequence[str] = ("a photo of a {}.",)) -> float:
    """Plain zero-shot accuracy (``logits = image features @ normalised class-prompt features``)."""
    from tasks.common.clip import zero_shot_classifier

    tf = zero_shot_classifier(model, tokenizer, classnames, templates)
    return float((zero_shot_predict(model, images, tf) == labels).float().mean())
