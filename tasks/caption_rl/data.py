"""Training data of caption RL: per image, the captioner's input embedding, the reward-CLIP image embedding,
its reference captions and its mined hard-negative neighbours; the rows the loop visits.

Rows: by default (:meth:`RLData.caption_rows`) one row per *(image, ground-truth caption)* pair, as Chaffin et al.'s
official data (one CSV row per COCO caption, ~5 per image), so an epoch visits every caption once and the
teacher-forcing targets and the discriminator's real examples cover all of them. Official quirk, kept: a shuffled
batch can hold two rows of the same image (two of its captions), whose image then appears twice among the
contrastive pool's images. ``RLData`` without ``rows`` has one row per image (VLRM: no captions needed; or
``caption_choice`` ``"first"`` / ``"random"``).

Hard negatives (Chaffin et al.): every training image queries an index of reward-CLIP *caption* embeddings and
keeps its nearest neighbours, itself excluded; the 4th and 5th serve as extra images of the contrastive pool. Here
the search is exact (chunked matrix products) over one caption per image with the image's own row excluded, where
the official FAISS IVF index is over caption rows (an image's own other captions can come back, so its own image
can be a "negative"): ours are harder to fool and never the image itself. The result is cached:
``neighbours [N, M]``, column ``r - 1`` holding the ``r``-th neighbour.
"""
from __future__ import annotations

import logging
import random
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .recipe import Batch

logger = logging.getLogger(__name__)

__all__ = ["RLData", "mine_hard_negatives", "cached_neighbours", "build_feature_data"]

#: ``pixels(image_indices [B]) -> [B, 3, H, W]``: images preprocessed for a pixel-reading reward (ITM).
PixelSource = Callable[[Tensor], Tensor]


@dataclass
class RLData:
    """Per-image training tensors (row ``i`` of every per-image tensor is image ``i``) and the rows to visit.

    Attributes:
        prefix_feats: ``[N, Dp]`` captioner input embeddings (policy CLIP; unnormalised is fine).
        reward_feats: ``[N, Dr]`` reward-CLIP image embeddings.
        references: ``N`` lists of reference captions (may be empty for unsupervised training).
        neighbours: ``[N, M]`` hard-negative neighbour rows (``None`` without mining).
        image_ids: ``N`` stable ids.
        rows: ``[R, 2]`` long ``(image, caption index)`` of each training row (:meth:`caption_rows`), or ``None``
            for one row per image.
        pixels: ``[N, 3, H, W]`` tensor or :data:`PixelSource` for an ITM reward, or ``None``.
        extra_feats: other ``[N, D]`` per-image embeddings by name (``"phi"``: VLRM-RS's own CLIP).
    """

    prefix_feats: Tensor
    reward_feats: Tensor
    references: list[list[str]]
    neighbours: Tensor | None = None
    image_ids: list[str] | None = None
    rows: Tensor | None = None
    pixels: Tensor | PixelSource | None = None
    extra_feats: dict[str, Tensor] = field(default_factory=dict)

    def __post_init__(self) -> None:
        n = self.prefix_feats.shape[0]
        if self.reward_feats.shape[0] != n or len(self.references) != n:
            raise ValueError(f"RLData rows differ: {n} prefix, {self.reward_feats.shape[0]} reward, "
                             f"{len(self.references)} reference lists")
        if self.neighbours is not None and self.neighbours.shape[0] != n:
            raise ValueError(f"{self.neighbours.shape[0]} neighbour rows for {n} images")
        for name, t in self.extra_feats.items():
            if t.shape[0] != n:
                raise ValueError(f"extra_feats['{name}'] has {t.shape[0]} rows for {n} images")
        if isinstance(self.pixels, Tensor) and self.pixels.shape[0] != n:
            raise ValueError(f"pixels has {self.pixels.shape[0]} images for {n}")
        if self.rows is not None:
            if self.rows.dim() != 2 or self.rows.shape[1] != 2:
                raise ValueError(f"rows must be [R, 2] (image, caption index), got {tuple(self.rows.shape)}")
            bad = [(int(i), int(c)) for i, c in self.rows.tolist()
                   if not (0 <= i < n and 0 <= c < len(self.references[i]))]
            if bad:
                raise ValueError(f"rows point to missing images or captions, e.g. {bad[0]}")

    def __len__(self) -> int:
        """Number of training rows (caption rows, or images)."""
        return int(self.rows.shape[0]) if self.rows is not None else self.num_images

    @property
    def num_images(self) -> int:
        return int(self.prefix_feats.shape[0])

    def caption_rows(self) -> RLData:
        """The same data with one row per ``(image, reference caption)`` pair, image-major (the official layout)."""
        rows = [(i, c) for i, refs in enumerate(self.references) for c in range(len(refs))]
        if not rows:
            raise ValueError("caption rows need reference captions; these images have none")
        missing = sum(1 for refs in self.references if not refs)
        if missing:
            logger.warning("%d images without reference captions get no row", missing)
        return replace(self, rows=torch.tensor(rows, dtype=torch.long))

    def batch(self, idx: Tensor, negatives: Sequence[int] = (), caption_choice: str = "first",
              seed: int | None = None, need_captions: bool = True) -> Batch:
        """Assemble the batch of rows ``idx [B]``.

        Args:
            negatives: 1-based neighbour ranks to add as hard-negative images (``(4, 5)``); the ``[B * k, D]``
                negatives are image-major (image 0's ranks, then image 1's, ...).
            caption_choice: without caption rows, the ``"first"`` reference or a ``"random"`` one (seeded by
                ``seed``); with caption rows, each row's own caption.
        """
        if caption_choice not in ("first", "random"):
            raise ValueError(f"caption_choice must be 'first' or 'random', got '{caption_choice}'")
        idx = idx.long().cpu()
        img = self.rows[idx, 0] if self.rows is not None else idx
        captions = None
        if need_captions:
            rng = random.Random(seed)
            captions = []
            for j, i in enumerate(img.tolist()):
                refs = self.references[i]
                if not refs:
                    raise ValueError(f"image {i} has no reference caption")
                if self.rows is not None:
                    captions.append(refs[int(self.rows[idx[j], 1])])
                else:
                    captions.append(refs[0] if caption_choice == "first" else rng.choice(refs))
        neg = None
        if negatives:
            if self.neighbours is None:
                raise ValueError("hard negatives asked for, but no neighbours were mined")
            if max(negatives) > self.neighbours.shape[1] or min(negatives) < 1:
                raise ValueError(f"negative ranks {list(negatives)} outside 1..{self.neighbours.shape[1]}")
            cols = torch.tensor([r - 1 for r in negatives])
            neg = self.reward_feats[self.neighbours[img][:, cols].reshape(-1)].float()
        pixels = None
        if self.pixels is not None:
            pixels = self.pixels[img] if isinstance(self.pixels, Tensor) else self.pixels(img)
        return Batch(img, self.prefix_feats[img].float(), self.reward_feats[img].float(), captions, neg, pixels,
                     {k: v[img].float() for k, v in self.extra_feats.items()})


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
                       workers: int = 4, extra_clips: dict[str, tuple[nn.Module, Callable, str, str]] | None = None,
                       pixel_transform: Callable | None = None) -> RLData:
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
        extra_clips: ``{name: (model, preprocess, arch, weights)}`` of other CLIPs whose image embeddings go to
            ``RLData.extra_feats[name]`` (``"phi"``: VLRM-RS's eq. 5 model), cached the same way.
        pixel_transform: ``PIL -> [3, H, W]`` of a pixel-reading reward (an ITM processor): ``RLData.pixels`` then
            loads the batch's images from disk.
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
    extra = {name: F.normalize(image_feats(m, pre, arch, w).float(), dim=-1)
             for name, (m, pre, arch, w) in (extra_clips or {}).items()}
    pixels = None
    if pixel_transform is not None:
        pds = CaptionImageDataset(items, images_root, pixel_transform)

        def pixels(idx: Tensor) -> Tensor:
            return torch.stack([pds[int(i)][0] for i in idx.tolist()])

    return RLData(prefix, F.normalize(reward.float(), dim=-1), [list(it.references) for it in items], nb,
                  [it.image_id for it in items], pixels=pixels, extra_feats=extra)
