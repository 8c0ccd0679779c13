"""Training data of caption RL: per image, the captioner's input embedding, the reward-CLIP image embedding,
its reference captions and its mined hard-negative neighbours.

Hard negatives (Chaffin et al.): every training image queries an index of reward-CLIP *caption* embeddings
(one caption per image, as their data has) and keeps its nearest neighbours, itself excluded; the 4th and 5th
serve as extra images of the contrastive pool. Here the search is exact (chunked matrix products) instead of
FAISS IVF, and the result is cached: ``neighbours [N, M]``, column ``r - 1`` holding the ``r``-th neighbour.
"""
from __future__ import annotations

import logging
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .common import Batch

logger = logging.getLogger(__name__)

__all__ = ["RLData", "mine_hard_negatives", "cached_neighbours", "build_feature_data"]


@dataclass
class RLData:
    """Per-image training tensors (row ``i`` everywhere is image ``i``).

    Attributes:
        prefix_feats: ``[N, Dp]`` captioner input embeddings (policy CLIP; unnormalised is fine).
        reward_feats: ``[N, Dr]`` reward-CLIP image embeddings.
        references: ``N`` lists of reference captions (may be empty for unsupervised training).
        neighbours: ``[N, M]`` hard-negative neighbour rows (``None`` without mining).
        image_ids: ``N`` stable ids.
    """

    prefix_feats: Tensor
    reward_feats: Tensor
    references: list[list[str]]
    neighbours: Tensor | None = None
    image_ids: list[str] | None = None

    def __post_init__(self) -> None:
        n = self.prefix_feats.shape[0]
        if self.reward_feats.shape[0] != n or len(self.references) != n:
            raise ValueError(f"RLData rows differ: {n} prefix, {self.reward_feats.shape[0]} reward, "
                             f"{len(self.references)} reference lists")
        if self.neighbours is not None and self.neighbours.shape[0] != n:
            raise ValueError(f"{self.neighbours.shape[0]} neighbour rows for {n} images")

    def __len__(self) -> int:
        return int(self.prefix_feats.shape[0])

    def batch(self, idx: Tensor, negatives: Sequence[int] = (), caption_choice: str = "first",
              seed: int | None = None, need_captions: bool = True) -> Batch:
        """Assemble the batch of rows ``idx [B]``.

        Args:
            negatives: 1-based neighbour ranks to add as hard-negative images (``(4, 5)``); the ``[B * k, D]``
                negatives are image-major (image 0's ranks, then image 1's, ...).
            caption_choice: ``"first"`` reference (Chaffin et al.'s data) or ``"random"`` (seeded by ``seed``).
        """
        idx = idx.long().cpu()
        captions = None
        if need_captions:
            rng = random.Random(seed)
            captions = []
            for i in idx.tolist():
                refs = self.references[i]
                if not refs:
                    raise ValueError(f"image {i} has no reference caption")
                captions.append(refs[0] if caption_choice == "first" else rng.choice(refs))
        neg = None
        if negatives:
            if self.neighbours is None:
                raise ValueError("hard negatives asked for, but no neighbours were mined")
            if max(negatives) > self.neighbours.shape[1] or min(negatives) < 1:
                raise ValueError(f"negative ranks {list(negatives)} outside 1..{self.neighbours.shape[1]}")
            cols = torch.tensor([r - 1 for r in negatives])
            rows = self.neighbours[idx][:, cols].reshape(-1)
            neg = self.reward_feats[rows].float()
        return Batch(idx, self.prefix_feats[idx].float(), self.reward_feats[idx].float(), captions, neg)


@torch.no_grad()
def mine_hard_negatives(queries: Tensor, keys: Tensor, num: int = 5, exclude_self: bool = True,
                        chunk: int = 1024, device: str | torch.device | None = None) -> Tensor:
    """Nearest keys of each query by cosine similarity (exact, chunked).

    Args:
        queries: ``[N, D]`` (image embeddings); keys: ``[N, D]`` (one caption or image embedding per image).
        num: neighbours kept.
        exclude_self: drop row ``i`` from the neighbours of query ``i``.
    Returns:
        ``[N, num]`` long, nearest first.
    """
    dev = torch.device(device) if device is not None else queries.device
    k = F.normalize(keys.float().to(dev), dim=-1)
    out = []
    extra = 1 if exclude_self else 0
    for s in range(0, queries.shape[0], chunk):
        q = F.normalize(queries[s:s + chunk].float().to(dev), dim=-1)
        sim = q @ k.t()
        if exclude_self:
            rows = torch.arange(q.shape[0], device=dev)
            sim[rows, rows + s] = float("-inf")
        top = sim.topk(min(num + extra, k.shape[0]), dim=-1).indices[:, :num]
        out.append(top.cpu())
    return torch.cat(out).long()


def cached_neighbours(path: str | Path, meta: dict, compute: Callable[[], Tensor]) -> Tensor:
    """Neighbours from ``path`` when its ``meta`` matches, else computed and saved atomically."""
    from tasks.captioning.checkpoint import save_atomic

    p = Path(path)
    if p.is_file():
        blob = torch.load(p, map_location="cpu", weights_only=False)
        if blob.get("meta") == meta:
            logger.info("loaded cached neighbours %s %s", p, tuple(blob["neighbours"].shape))
            return blob["neighbours"]
        logger.warning("neighbour cache %s was made for %s, not %s: recomputing", p, blob.get("meta"), meta)
    nb = compute()
    save_atomic({"meta": meta, "neighbours": nb}, p)
    logger.info("saved neighbours %s %s", p, tuple(nb.shape))
    return nb


def build_feature_data(items: Sequence, prefix_clip: tuple[nn.Module, Callable], reward_clip: tuple[nn.Module, Callable,
                       Callable], images_root: str | Path, feature_dir: str | Path, names: dict[str, str],
                       neighbours: int = 0, neighbour_keys: str = "caption", device: str | torch.device = "cpu",
                       workers: int = 4) -> RLData:
    """Features (cached in ``feature_dir``, shared with :mod:`tasks.captioning.train` for the prefix CLIP) and
    neighbours of caption items.

    Args:
        items: :class:`tasks.captioning.data.CaptionItem` list.
        prefix_clip: ``(model, preprocess)`` of the captioner's CLIP.
        reward_clip: ``(model, preprocess, tokenizer)`` of the reward CLIP.
        names: ``{"dataset", "split", "prefix_arch", "prefix_weights", "reward_arch", "reward_weights",
            "annotations"}`` for the cache files.
        neighbours: how many neighbours to mine (0: none).
        neighbour_keys: ``"caption"`` (first reference, reward-CLIP text embedding: the paper) or ``"image"``.
    """
    from tasks.captioning.data import CaptionImageDataset
    from tasks.captioning.features import cache_path, cached, extract_image_features, extract_text_features

    def image_feats(model: nn.Module, preprocess: Callable, arch: str, weights: str) -> Tensor:
        ds = CaptionImageDataset(items, images_root, preprocess)
        meta = {"arch": arch, "weights": str(weights), "annotations": names["annotations"], "split": names["split"],
                "kind": "image", "n": len(items)}
        path = cache_path(feature_dir, names["dataset"], names["split"], arch, weights, "image")
        return cached(path, meta, lambda: extract_image_features(model, ds, device, 256, workers))

    prefix = image_feats(prefix_clip[0], prefix_clip[1], names["prefix_arch"], names["prefix_weights"])
    same = (names["prefix_arch"], names["prefix_weights"]) == (names["reward_arch"], names["reward_weights"])
    reward = prefix if same else image_feats(reward_clip[0], reward_clip[1], names["reward_arch"],
                                             names["reward_weights"])
    nb = None
    if neighbours > 0:
        tag = f"{names['reward_arch']}-{Path(str(names['reward_weights'])).stem}".replace("/", "-")
        meta = {"reward": tag, "annotations": names["annotations"], "split": names["split"], "n": len(items),
                "num": neighbours, "keys": neighbour_keys}
        stem = f"{names['dataset']}__{names['split']}__{tag}__neighbours{neighbours}-{neighbour_keys}"
        path = Path(feature_dir) / f"{stem}.pt"

        def compute() -> Tensor:
            if neighbour_keys == "caption":
                keys = extract_text_features(reward_clip[0], reward_clip[2], [it.references[0] for it in items], device)
            else:
                keys = reward
            return mine_hard_negatives(reward, keys, neighbours, device=device)

        nb = cached_neighbours(path, meta, compute)
    return RLData(prefix, F.normalize(reward.float(), dim=-1), [list(it.references) for it in items], nb,
                  [it.image_id for it in items])
