"""CLIP features for captioner training, extracted once and cached on disk.

ClipCap trains on image embeddings: one per *image* (not per caption, unlike ClipCap's
``parse_coco.py``), each caption points at its image's row. CapDec trains on the text embedding of
each caption. Caches are ``.pt`` files keyed by dataset, split, CLIP architecture + weights and
kind, e.g. ``coco_karpathy_train__train__ViT-B-16-openai__image.pt``, holding ``{"meta", "features"}``
(features ``[N, D]`` float16, unnormalised).
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

import torch

from rlcf.reward import encode_batched
from torch import Tensor, nn
from torch.utils.data import DataLoader
from tqdm.auto import tqdm

from tasks.common.data import loader_workers

from .checkpoint import save_atomic
from .data import CaptionImageDataset, CaptionItem

logger = logging.getLogger(__name__)

__all__ = ["TrainingSet", "cache_path", "cached", "extract_image_features", "extract_text_features",
           "build_training_set"]


@dataclass
class TrainingSet:
    """Features and captions of a captioner training set.

    Attributes:
        features: ``[N, D]`` CLIP embeddings (images for ClipCap, captions for CapDec).
        captions: ``M`` training captions.
        feature_index: ``[M]`` row of ``features`` for each caption.
    """

    features: Tensor
    captions: list[str]
    feature_index: Tensor

    def __len__(self) -> int:
        return len(self.captions)


def _slug(text: str) -> str:
    return "".join(c if c.isalnum() or c in "-._" else "-" for c in text).strip("-")


def cache_path(feature_dir: str | Path, dataset: str, split: str, arch: str, weights: str | None, kind: str) -> Path:
    """File of a feature cache: ``<dir>/<dataset>__<split>__<arch>-<weights stem>__<kind>.pt``."""
    tag = _slug(arch) + (f"-{_slug(Path(weights).stem)}" if weights else "")
    return Path(feature_dir) / f"{_slug(dataset)}__{_slug(split)}__{tag}__{kind}.pt"


def cached(path: str | Path, meta: dict, compute: Callable[[], Tensor]) -> Tensor:
    """Features from ``path`` if its ``meta`` matches, else ``compute()`` and save them atomically."""
    p = Path(path)
    if p.is_file():
        try:
            blob = torch.load(p, map_location="cpu", weights_only=False)
        except Exception as e:  # noqa: BLE001 - a damaged cache is recomputed, not fatal
            logger.warning("feature cache %s does not read (%s: %s): recomputing", p, type(e).__name__,
                           str(e).splitlines()[0][:120] if str(e) else "")
            blob = {}
        if blob.get("meta") == meta:
            logger.info("loaded cached features %s %s", p, tuple(blob["features"].shape))
            return blob["features"]
        if blob:
            logger.warning("feature cache %s was made for %s, not %s: recomputing", p, blob.get("meta"), meta)
    feats = compute().to(torch.float16).cpu()
    save_atomic({"meta": meta, "features": feats}, p)
    logger.info("saved features %s %s", p, tuple(feats.shape))
    return feats


@torch.no_grad()
def extract_image_features(clip_model: nn.Module, dataset: CaptionImageDataset, device: str | torch.device = "cpu",
                           batch_size: int = 256, workers: int = 4, amp: bool = True) -> Tensor:
    """``[N, D]`` image embeddings (float32, unnormalised) of every image of ``dataset`` (in order); ``workers``
    DataLoader processes, at most the available cores."""
    dev = torch.device(device)
    loader = DataLoader(dataset, batch_size=batch_size, shuffle=False, num_workers=loader_workers(workers))
    out = []
    for images, _ in tqdm(loader, desc="image features", mininterval=5):
        with torch.autocast(dev.type, dtype=torch.float16, enabled=amp and dev.type == "cuda"):
            out.append(clip_model.encode_image(images.to(dev)).float().cpu())
    return torch.cat(out)


@torch.no_grad()
def extract_text_features(clip_model: nn.Module, tokenizer: Callable, texts: Sequence[str],
                          device: str | torch.device = "cpu", batch_size: int = 1024, amp: bool = True) -> Tensor:
    """``[M, D]`` text embeddings (float32, unnormalised); texts longer than the context are truncated."""
    dev = torch.device(device)
    if len(texts) == 0:
        return torch.zeros(0)

    def encode(chunk: Sequence[str]) -> Tensor:
        with torch.autocast(dev.type, dtype=torch.float16, enabled=amp and dev.type == "cuda"):
            return clip_model.encode_text(tokenizer(list(chunk)).to(dev)).float().cpu()

    return encode_batched(encode, list(texts), batch_size, normalize=False, progress="text features")


def build_training_set(items: Sequence[CaptionItem], mode: str, clip_model: nn.Module, preprocess: Callable,
                       tokenizer: Callable, images_root: str | Path, feature_file: str | Path, meta: dict,
                       device: str | torch.device = "cpu", workers: int = 4, batch_size: int = 256) -> TrainingSet:
    """Training features for ``mode`` ``clipcap`` (image embeddings) or ``capdec`` (caption embeddings).

    Args:
        items: training images with their captions (one row per image).
        feature_file: cache file (see :func:`cache_path`); ``meta`` identifies its content.
    """
    if mode not in ("clipcap", "capdec"):
        raise ValueError(f"mode must be 'clipcap' or 'capdec', got '{mode}'")
    captions = [c for it in items for c in it.references]
    if mode == "clipcap":
        ds = CaptionImageDataset(items, images_root, preprocess)
        feats = cached(feature_file, {**meta, "kind": "image", "n": len(items)},
                       lambda: extract_image_features(clip_model, ds, device, batch_size, workers))
        index = torch.tensor([i for i, it in enumerate(items) for _ in it.references], dtype=torch.long)
    else:
        feats = cached(feature_file, {**meta, "kind": "text", "n": len(captions)},
                       lambda: extract_text_features(clip_model, tokenizer, captions, device, 4 * batch_size))
        index = torch.arange(len(captions), dtype=torch.long)
    return TrainingSet(feats, captions, index)
