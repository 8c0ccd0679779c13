"""Recall@K for image-text retrieval (LAVIS ``RetrievalTask._report_metrics`` definitions).

* image -> text (``i2t``): an image query is correct at K when ANY of its captions is in the top K;
  reported as ``txt_r1/5/10`` and their mean ``txt_r_mean``;
* text -> image (``t2i``): a caption query is correct at K when its image is in the top K;
  ``img_r1/5/10`` and ``img_r_mean``;
* ``r_mean`` = mean of ``txt_r_mean`` and ``img_r_mean``, only when both directions ran (the official
  code leaves the other matrix at -100 and averages it in; we never do).

**Rank and ties.** The rank of gallery item ``g`` in a score row is its position in
``np.argsort(score, kind="stable")[::-1]`` (LAVIS's ranking, made deterministic): the number of
items with a strictly higher score, plus the number of items with an equal score and a *higher*
index. A query's rank is the best (lowest) rank of its ground-truth items; correct at K iff rank < K.
Only this rank is stored per query, so no score matrix is kept.
"""
from __future__ import annotations

from collections.abc import Iterable, Sequence

import numpy as np
import torch
from torch import Tensor

__all__ = ["best_rank", "ranked", "recall_at_k", "direction_metrics", "combine_directions", "report_metrics",
           "KS", "PREFIX"]

KS = (1, 5, 10)
PREFIX = {"i2t": "txt", "t2i": "img"}   # LAVIS names: txt_r* = text retrieval (image queries)


def best_rank(scores: Tensor, gt: Sequence[int]) -> int:
    """Best rank (0 = first) of the ground-truth indices ``gt`` in the score row ``scores [N]``."""
    s = scores.detach().float().flatten()
    g = torch.as_tensor(list(gt), dtype=torch.long, device=s.device)
    sg = s[g][:, None]                                                  # [G, 1]
    idx = torch.arange(s.shape[0], device=s.device)
    higher = (s[None, :] > sg).sum(1)
    tied_after = ((s[None, :] == sg) & (idx[None, :] > g[:, None])).sum(1)
    return int((higher + tied_after).min())


def ranked(scores: Tensor, top: int = 10) -> list[int]:
    """The first ``top`` gallery indices in the rank order of :func:`best_rank`."""
    order = torch.argsort(scores.detach().float().flatten().cpu(), stable=True).flip(0)
    return order[:top].tolist()


def recall_at_k(ranks: Iterable[int], ks: Sequence[int] = KS) -> dict[int, float]:
    """``{K: 100 * fraction of ranks < K}``."""
    r = np.asarray(list(ranks), dtype=np.int64)
    if r.size == 0:
        raise ValueError("no query ranks to compute recall from")
    return {k: 100.0 * float((r < k).mean()) for k in ks}


def direction_metrics(ranks: Iterable[int], direction: str) -> dict[str, float]:
    """``{txt|img}_r1, _r5, _r10, _r_mean`` of one direction (``i2t`` or ``t2i``)."""
    if direction not in PREFIX:
        raise ValueError(f"direction must be 'i2t' or 't2i', got '{direction}'")
    rec = recall_at_k(ranks)
    p = PREFIX[direction]
    out = {f"{p}_r{k}": v for k, v in rec.items()}
    out[f"{p}_r_mean"] = sum(rec.values()) / len(rec)
    return out


def combine_directions(*metrics: dict[str, float]) -> dict[str, float]:
    """Merge per-direction metrics; adds ``r_mean`` when both directions are present."""
    out: dict[str, float] = {}
    for m in metrics:
        out.update(m)
    if "txt_r_mean" in out and "img_r_mean" in out:
        out["r_mean"] = (out["txt_r_mean"] + out["img_r_mean"]) / 2
    return out


def report_metrics(scores_i2t: np.ndarray | None, scores_t2i: np.ndarray | None,
                   img2txt: Sequence[Sequence[int]], txt2img: Sequence[int]) -> dict[str, float]:
    """Full-matrix reference (LAVIS ``_report_metrics`` with a stable sort).

    Args:
        scores_i2t: ``[N_img, N_txt]`` scores, or ``None`` when image->text was not run.
        scores_t2i: ``[N_txt, N_img]`` scores, or ``None``.
        img2txt: captions of each image; txt2img: image of each caption.
    """
    parts = []
    if scores_i2t is not None:
        parts.append(direction_metrics(
            [best_rank(torch.as_tensor(row), img2txt[i]) for i, row in enumerate(np.asarray(scores_i2t))], "i2t"))
    if scores_t2i is not None:
        parts.append(direction_metrics(
            [best_rank(torch.as_tensor(row), [txt2img[t]]) for t, row in enumerate(np.asarray(scores_t2i))], "t2i"))
    return combine_directions(*parts)
