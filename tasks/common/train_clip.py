"""The contrastive CLIP trainer: train a small CLIP on image-caption data (the embedded world's models and the
``rlcf train-clip`` command, :mod:`tasks.train_clip`, use it).

``load_training_data`` reads a list file (CSV / JSONL of ``path,caption[,caption...]``, :mod:`tasks.common.lists`)
or a folder of class folders (captions from the class names: ``"a photo of a <name>."``, and the labels known, so
``label_aware`` training can treat same-class pairs of a batch as positives, not negatives); ``save_clip`` writes
``<out>/<arch>.pt`` + ``<out>/<arch>.json``, which load with
``tasks.common.clip.load_clip(<arch>, "<out>/<arch>.pt", config_file="<out>/<arch>.json")``.

Training is the plain CLIP recipe: one caption of each image per step, symmetric InfoNCE
(``open_clip.loss.ClipLoss``) with the learnable temperature, AdamW, linear warm-up then cosine decay; images
are held in memory as one ``uint8`` tensor ``(N, 3, H, W)`` at the model's input size, captions tokenised once
to ``(N, K, L)``. Everything is seeded (``torch.Generator``): a run on the same machine and thread count is
reproducible. Augmentations apply to batches: a preset name (:data:`tasks.common.augment.AUGMENTATIONS`) or a
callable ``(x [B, 3, H, W] in [0, 1], generator) -> x`` (a torchvision transform is applied per image).
"""
from __future__ import annotations

import inspect
import json
import logging
import math
import os
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import torch
import torch.nn.functional as F
from open_clip.constants import OPENAI_DATASET_MEAN, OPENAI_DATASET_STD
from open_clip.loss import ClipLoss
from torch import Tensor
from tqdm.auto import tqdm
from tqdm.contrib.logging import logging_redirect_tqdm

from .augment import AUGMENTATIONS, augment_batch
from .progress import bar_interval, format_seconds
from .data import UserError

logger = logging.getLogger(__name__)

__all__ = ["TrainConfig", "train_clip", "label_aware_clip_loss", "normalize", "as_batch_augment", "save_clip",
           "load_training_data", "init_for_short_training", "rescale_text_tower", "tokens_for", "TrainConfigError"]

Augment = Callable[[Tensor, torch.Generator], Tensor]


class TrainConfigError(UserError, ValueError):
    """A training option or its data that cannot work (named in the message)."""


def as_batch_augment(aug: str | Callable) -> Augment | None:
    """A preset name, a ``(x, generator)`` callable, or a one-argument transform (torchvision) applied per
    image -> a batch augmentation (``None`` for ``"none"``)."""
    if isinstance(aug, str):
        if aug not in AUGMENTATIONS:
            raise TrainConfigError(f"unknown augmentation '{aug}': use one of {AUGMENTATIONS} or a callable "
                                   "(x [B, 3, H, W] in [0, 1], generator) -> x, or a torchvision transform")
        return None   # the presets run through augment_batch
    if not callable(aug):
        raise TrainConfigError(f"augment must be a preset name or a callable, got {type(aug).__name__}")
    try:
        n_args = len([p for p in inspect.signature(aug).parameters.values()
                      if p.default is inspect.Parameter.empty and p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)])
    except (TypeError, ValueError):
        n_args = 1
    if n_args >= 2:
        return aug
    return lambda x, g: torch.stack([aug(xi) for xi in x])   # per image, torch's RNG (seeded by the run)


@dataclass(frozen=True)
class TrainConfig:
    """Hyper-parameters of one contrastive training run (validated when built).

    ``augment``: a preset (``none`` | ``light`` | ``heavy``) or a callable (see :func:`as_batch_augment`);
    ``flip``: the presets' horizontal flip (off for text or handwriting); ``augment_from``: clean images for
    the first steps; ``augment_p``: the fraction of each batch that is augmented.
    ``crop_scale``: the area range of the presets' random resized crop.
    ``first_caption_p``: probability of training on an image's first caption (the others are drawn
    uniformly). ``label_aware``: same-label pairs of a batch count as positives (needs labels).
    """

    steps: int = 600
    batch_size: int = 128
    lr: float = 1e-3
    weight_decay: float = 0.1
    warmup: int = 50
    seed: int = 0
    augment: Any = "none"
    first_caption_p: float = 0.6
    augment_p: float = 1.0
    augment_from: int = 0
    flip: bool = True
    label_aware: bool = False
    crop_scale: tuple[float, float] = (0.6, 1.0)

    def __post_init__(self) -> None:
        as_batch_augment(self.augment)   # raises now, not at the first step
        if self.steps < 1 or self.batch_size < 2:
            raise TrainConfigError(f"need steps >= 1 and batch_size >= 2, got {self.steps} and {self.batch_size}")
        if not 0.0 < self.crop_scale[0] <= self.crop_scale[1] <= 1.0:
            raise TrainConfigError(f"crop_scale must satisfy 0 < min <= max <= 1, got {self.crop_scale}")
        if not 0.0 <= self.augment_p <= 1.0 or not 0.0 <= self.first_caption_p <= 1.0:
            raise TrainConfigError("augment_p and first_caption_p are probabilities in [0, 1]")


def normalize(x: Tensor) -> Tensor:
    """``uint8`` or ``[0, 1]`` float images ``(B, 3, H, W)`` -> CLIP-normalised float ``(B, 3, H, W)``
    (open_clip's eval transform on images that already have the model's input size)."""
    if x.dtype == torch.uint8:
        x = x.float() / 255.0
    mean = torch.tensor(OPENAI_DATASET_MEAN, dtype=x.dtype, device=x.device).view(1, 3, 1, 1)
    std = torch.tensor(OPENAI_DATASET_STD, dtype=x.dtype, device=x.device).view(1, 3, 1, 1)
    return (x - mean) / std


def label_aware_clip_loss(img: Tensor, txt: Tensor, scale: Tensor, labels: Tensor) -> Tensor:
    """Symmetric InfoNCE whose targets spread over every same-label pair of the batch (captions made from class
    labels: two images of one class are not negatives). With all labels distinct it is ``ClipLoss``.

    Args:
        img, txt: ``[B, D]`` normalised features; scale: the temperature scale; labels: ``[B]``.
    """
    logits = scale * img @ txt.t()
    same = (labels[:, None] == labels[None, :]).float()
    target = same / same.sum(1, keepdim=True)
    return 0.5 * (-(target * F.log_softmax(logits, 1)).sum(1).mean() - (target * F.log_softmax(logits.t(), 1)).sum(1).mean())


def _lr_at(step: int, cfg: TrainConfig) -> float:
    if step < cfg.warmup:
        return cfg.lr * (step + 1) / cfg.warmup
    t = (step - cfg.warmup) / max(1, cfg.steps - cfg.warmup)
    return cfg.lr * 0.5 * (1 + math.cos(math.pi * t))


def train_clip(model: torch.nn.Module, images: Tensor, tokens: Tensor, cfg: TrainConfig, desc: str = "train",
               progress: bool = True, callback: Callable[[int, float], bool | None] | None = None,
               labels: Tensor | None = None, checkpoint: str | Path | None = None, save_every: int = 100,
               log_every: int | None = None) -> list[float]:
    """Train ``model`` in place with the CLIP loss; returns the loss of every step.

    Args:
        model: an open_clip ``CLIP`` (its forward returns normalised features and ``logit_scale.exp()``).
        images: ``uint8`` ``(N, 3, H, W)`` at the model's input size.
        tokens: ``long`` ``(N, K, L)``: ``K`` tokenised captions per image.
        cfg: hyper-parameters.
        callback: called as ``callback(step, loss)`` after every step; returning ``True`` stops training there
            (early stopping: the losses so far are returned). The model is in train mode when it returns.
        labels: ``[N]`` class labels (``cfg.label_aware``).
        checkpoint: a file for the training state (model, AdamW, RNG, batch order, losses), written atomically every
            ``save_every`` steps and at the end; when it exists, training resumes from it and ends exactly as an
            uninterrupted run would (``None``: no checkpoints).
        log_every: a log line at the first step of the run, every ``log_every`` steps and the last (``None``: none).
    Returns:
        The loss of every step (after a resume: the earlier steps' too).
    """
    from rlcf.reward import input_resolution

    from .runner import dist_info

    if images.dtype != torch.uint8 or images.ndim != 4:
        raise TrainConfigError(f"images must be uint8 (N, 3, H, W), got {images.dtype} {tuple(images.shape)}")
    n, k = tokens.shape[0], tokens.shape[1]
    if n != images.shape[0]:
        raise TrainConfigError(f"{images.shape[0]} images but {n} caption rows")
    size = input_resolution(model)
    if size is not None and tuple(images.shape[-2:]) != (size, size):
        raise TrainConfigError(f"images are {tuple(images.shape[-2:])} but the model takes {size} x {size}: resize them "
                               "(load_training_data does) or change the architecture's image_size")
    if cfg.batch_size > n:
        raise TrainConfigError(f"batch_size {cfg.batch_size} is larger than the {n} training images")
    if cfg.label_aware and (labels is None or len(labels) != n):
        raise TrainConfigError("label_aware training needs one label per image (a folder dataset gives them)")
    augment = as_batch_augment(cfg.augment)
    g = torch.Generator().manual_seed(cfg.seed)
    decay = [p for name, p in model.named_parameters() if p.ndim >= 2 and "embedding" not in name]
    other = [p for name, p in model.named_parameters() if not (p.ndim >= 2 and "embedding" not in name)]
    groups = [{"params": decay, "weight_decay": cfg.weight_decay}, {"params": other, "weight_decay": 0.0}]
    # the fused kernel is ~7x faster on CPU than the per-tensor loop (most of it: the 49408-row token embedding)
    fused = all(p.device.type in ("cpu", "cuda") for p in model.parameters())
    opt = torch.optim.AdamW(groups, lr=cfg.lr, betas=(0.9, 0.98), eps=1e-6, fused=fused)
    model.to(memory_format=torch.channels_last)  # ~25 % faster convolutions on CPU
    loss_fn = ClipLoss()
    model.train()
    losses: list[float] = []
    perm, pos = torch.randperm(n, generator=g), 0
    start = 0
    if checkpoint is not None and Path(checkpoint).is_file():
        start, perm, pos = _resume(Path(checkpoint), model, opt, g, losses)
    rank = dist_info()[0]
    # a manual bar: tqdm's iterator form keeps its count in a local, so a refresh by its monitor thread (a log
    # file's long interval) showed a stale step next to a fresh loss
    bar = tqdm(total=cfg.steps, initial=start, desc=desc, disable=not progress or rank != 0,
               mininterval=bar_interval(2.0), dynamic_ncols=True, unit="step")
    t0 = time.perf_counter()
    try:
        for step in range(start, cfg.steps):
            if pos + cfg.batch_size > n:
                perm, pos = torch.randperm(n, generator=g), 0
            idx = perm[pos:pos + cfg.batch_size]
            pos += cfg.batch_size
            cap = torch.randint(1, k, (len(idx),), generator=g) if k > 1 else torch.zeros(len(idx), dtype=torch.long)
            cap = torch.where(torch.rand(len(idx), generator=g) < cfg.first_caption_p, torch.zeros_like(cap), cap)
            x = images[idx].float() / 255.0
            if step >= cfg.augment_from and cfg.augment != "none":
                xa = augment(x, g) if augment is not None else augment_batch(x, g, cfg.augment, flip=cfg.flip, crop_scale=tuple(cfg.crop_scale))
                if cfg.augment_p < 1.0:   # the rest of the batch stays clean
                    xa = torch.where((torch.rand(len(idx), generator=g) < cfg.augment_p)[:, None, None, None], xa, x)
                x = xa
            x = normalize(x).contiguous(memory_format=torch.channels_last)
            for group in opt.param_groups:
                group["lr"] = _lr_at(step, cfg)
            img_f, txt_f, scale = model(x, tokens[idx, cap])[:3]
            loss = (label_aware_clip_loss(img_f, txt_f, scale, labels[idx]) if cfg.label_aware
                    else loss_fn(img_f, txt_f, scale))
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            with torch.no_grad():
                model.logit_scale.clamp_(0, math.log(100))
            losses.append(float(loss.detach()))
            if callback is not None:
                stop = callback(step, losses[-1]) is True
                model.train()   # the callback may have evaluated the model
                if stop:
                    bar.update(1)
                    break
            if step % 10 == 0:
                bar.set_postfix(loss=f"{sum(losses[-10:]) / len(losses[-10:]):.3f}", lr=f"{_lr_at(step, cfg):.1e}",
                                refresh=False)   # drawn at the bar's own interval (a log file gets few lines)
            bar.update(1)
            done = step + 1
            if checkpoint is not None and (done % max(1, save_every) == 0 or done == cfg.steps):
                _save_state(Path(checkpoint), model, opt, g, perm, pos, done, losses)
            if log_every and rank == 0 and (done == start + 1 or done % log_every == 0 or done == cfg.steps):
                per = (time.perf_counter() - t0) / (done - start)
                with logging_redirect_tqdm():
                    logger.info("step %d/%d (%.1f%%): loss %.4f, lr %.2e, %.2f s/step, ETA %s", done, cfg.steps,
                                100.0 * done / cfg.steps, sum(losses[-log_every:]) / len(losses[-log_every:]),
                                _lr_at(step, cfg), per, format_seconds(per * (cfg.steps - done)))
    finally:   # also when a callback raises (a plateau restart draws a fresh bar)
        bar.close()
    model.eval()
    return losses


RESUME_HINT = "it is this run's own training state: move it away (or delete it) to train from the start"


def _save_state(path: Path, model: torch.nn.Module, opt: torch.optim.Optimizer, g: torch.Generator, perm: Tensor,
                pos: int, step: int, losses: list[float]) -> None:
    """Everything a resume needs, written atomically (a kill never leaves half a file)."""
    from .atomic import save_atomic

    save_atomic({"format": "rlcf-train-clip/1", "step": step, "model": model.state_dict(),
                 "optimizer": opt.state_dict(), "generator": g.get_state(), "torch_rng": torch.get_rng_state(),
                 "perm": perm, "pos": pos, "losses": list(losses)}, path)


def _resume(path: Path, model: torch.nn.Module, opt: torch.optim.Optimizer, g: torch.Generator,
            losses: list[float]) -> tuple[int, Tensor, int]:
    """Load :func:`_save_state`'s file into ``model``, ``opt``, ``g`` and ``losses``; ``(step, perm, pos)``."""
    from .preflight import WeightFile, reading, require_intact

    require_intact([WeightFile("training checkpoint", path, RESUME_HINT)])
    with reading(path, "training checkpoint", RESUME_HINT):
        state = torch.load(path, map_location="cpu", weights_only=False)
    model.load_state_dict(state["model"])
    opt.load_state_dict(state["optimizer"])
    g.set_state(state["generator"])
    torch.set_rng_state(state["torch_rng"])
    losses[:] = state["losses"]
    logger.info("resumed from %s at step %d", path, state["step"])
    return int(state["step"]), state["perm"], int(state["pos"])


@dataclass
class TrainingData:
    """Images ``uint8 (N, 3, S, S)``, captions (``N`` lists) and labels (folder data) for :func:`train_clip`."""

    images: Tensor
    captions: list[list[str]]
    labels: Tensor | None = None
    classnames: list[str] = field(default_factory=list)


def load_training_data(data: str | Path, size: int, template: str = "a photo of a {}.") -> TrainingData:
    """A list file (``path,caption[,caption...]``) or a folder of class folders, loaded at ``size`` (bicubic resize
    of the short side + centre crop, as open_clip's eval transform)."""
    import numpy as np
    from PIL import Image
    from torchvision import transforms as T

    from .lists import read_list

    tf = T.Compose([T.Resize(size, interpolation=T.InterpolationMode.BICUBIC), T.CenterCrop(size)])
    p = Path(data).expanduser()
    if p.is_dir():
        classes = sorted(e.name for e in os.scandir(p) if e.is_dir() and not e.name.startswith("."))
        if not classes:
            raise TrainConfigError(f"'{p}' has no class folders: expected {p}/<class>/*.jpg, or give a list file")
        files, labels = [], []
        for y, c in enumerate(classes):
            for f in sorted((p / c).rglob("*")):
                if f.suffix.lower() in (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".ppm") and not f.name.startswith("."):
                    files.append(f)
                    labels.append(y)
        captions = [[template.format(classes[y].replace("_", " "))] for y in labels]
        lab = torch.tensor(labels)
    else:
        rows = read_list(p, check_files=True, min_values=1)
        files, captions, lab, classes = [r.file for r in rows], [list(r.values) for r in rows], None, []
    imgs = []
    for f in files:
        with Image.open(f) as im:
            imgs.append(np.asarray(tf(im.convert("RGB"))))
    x = torch.from_numpy(np.stack(imgs)).permute(0, 3, 1, 2).contiguous()
    return TrainingData(x, captions, lab, classes)


def tokens_for(captions: Sequence[Sequence[str]], tokenizer: Callable) -> Tensor:
    """``(N, K, L)`` token ids; images with fewer than ``K`` captions repeat their last one."""
    k = max(len(c) for c in captions)
    flat = [c[min(j, len(c) - 1)] for c in captions for j in range(k)]
    return tokenizer(flat).view(len(captions), k, -1)


def save_clip(model: torch.nn.Module, config_file: str | Path, out: str | Path, name: str, meta: dict | None = None) -> Path:
    """``<out>/<name>.pt`` (state dict), ``<out>/<name>.json`` (the architecture) and ``<out>/<name>.train.json``."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    pt = out / f"{name}.pt"
    torch.save(model.state_dict(), pt)
    if Path(config_file).resolve() != (out / f"{name}.json").resolve():
        shutil.copyfile(config_file, out / f"{name}.json")
    (out / f"{name}.train.json").write_text(json.dumps(meta or {}, indent=1, default=str))
    return pt


def init_for_short_training(model: torch.nn.Module, token_std: float = 1.0) -> int:
    """Re-initialise two open_clip defaults that stall short from-scratch runs; return #BN scales reset.

    * ``ModifiedResNet`` zero-initialises ``bn3.weight`` of every bottleneck (the residual branch
      starts switched off), which suits deep nets trained for long; with one block per stage and a
      few hundred steps the image tower starts almost linear and learning stalls (dev, supervised
      proxy: loss 2.8 vs 1.7 after 150 steps).  Reset to 1.
    * The token embedding is drawn with std 0.02, so at init the class prompts ("a photo of a
      star." / "... ring.") are nearly the same vector and the loss sits on a plateau; std 1
      (``nn.Embedding``'s default) shortens it (dev zero-shot after 300 steps: 15 % -> 35 %).

    Only initial values change; the architecture and the checkpoint format are open_clip's. Trap: prompt
    tuning of such a model moves context vectors of std ~1, not CLIP's 0.02, so the official prompt learning
    rates take ~50x smaller relative steps (``benchmarks/prompt_scale.py``). Call :func:`rescale_text_tower`
    after training (the world's models and ``--short-init`` of the CLI do) to give it CLIP's scale back.
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


@torch.no_grad()
def rescale_text_tower(model: torch.nn.Module, token_std: float = 0.02) -> float:
    """Rescale an open_clip text tower so that its token embeddings have std ``token_std`` (CLIP's 0.02), keeping
    its function: token and positional embeddings and every residual branch's output projection (attention
    ``out_proj``, MLP ``c_proj``, weights and biases) are multiplied by the same ``c``, so the residual stream is
    ``c`` times the old one and every pre-norm LayerNorm (scale-invariant) sees the same input up to its ``eps``.

    Exact only when the LayerNorms' ``eps`` is negligible against the rescaled stream's variance: the world's
    architectures set ``text_cfg.norm_kwargs.eps = 1e-12`` (open_clip's 1e-5 would move features by ~5e-3 at
    ``c`` = 0.02). Why: prompt tuning with Adam moves each context coordinate by about ``lr`` per step, whatever
    the scale of the embeddings, so on token embeddings of std 1 the official prompt learning rates (5e-3, 7e-3)
    take steps ~50x smaller relative to the context than on CLIP's; after the rescale they mean what they mean on
    CLIP (Adam at ``lr`` on the rescaled tower = Adam at ``lr / c`` on the original). Returns ``c``.
    """
    emb = model.token_embedding.weight
    c = float(token_std / emb.float().std())
    emb.mul_(c)
    model.positional_embedding.mul_(c)
    for block in model.transformer.resblocks:
        for proj in (block.attn.out_proj, block.mlp.c_proj):
            proj.weight.mul_(c)
            if proj.bias is not None:
                proj.bias.mul_(c)
    norms = [*model.transformer.modules(), model.ln_final]
    eps = [m.eps for m in norms if isinstance(m, torch.nn.LayerNorm) and m.eps > 1e-9]
    if eps:
        logger.warning("rescale_text_tower: LayerNorm eps %g is not negligible after a rescale by %.3g; text "
                       "features move (set text_cfg.norm_kwargs.eps=1e-12 in the architecture JSON)", eps[0], c)
    return c
