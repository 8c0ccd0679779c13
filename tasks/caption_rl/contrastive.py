"""Batch-contrastive CLIP rewards.

* :func:`bidirectional_contrastive_reward`: Chaffin et al. (2024). Every text of the pool (policy, ground-truth
  and greedy captions of the batch) and every image of the pool (the batch images plus mined hard negatives)
  is a baseline for the others. For a rewarded pair ``(t, i)`` with ``S = scale * cos`` (``scale`` = 100, the
  CLIP logit scale)::

      text term   = S[t, i] - log sum_{t' != t} exp S[t', i]      (t against every other text, at image i)
      image term  = S[t, i] - log sum_{i' != i} exp S[t, i']      (i against every other image, for text t)
      reward      = (min(text term, clamp) + min(image term, clamp)) / (2 * scale)

  This is the published code's formula (log-odds of the true pair against all the others; ``clamp`` = 16
  guards the case where the others' mass underflows). ``include_self=True`` gives the plain log-softmax.
* :func:`normalized_contrastive_term`: VLRM-RS's eq. 5, ``Phi = standardise(diag(softmax(S, 0) * softmax(S, 1)))``
  over the batch, with ``S`` the raw cosine matrix (images x texts).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = ["bidirectional_contrastive_reward", "normalized_contrastive_term", "cosine_matrix"]


def cosine_matrix(a: Tensor, b: Tensor) -> Tensor:
    """``[N, D] x [M, D] -> [N, M]`` cosine similarities (float32)."""
    return F.normalize(a.float(), dim=-1) @ F.normalize(b.float(), dim=-1).t()


def _log_others(values: Tensor, own: Tensor, include_self: bool) -> Tensor:
    """``[R]``: ``log sum_j exp values[r, j]`` over ``j != own[r]`` (every ``j`` when ``include_self``).

    Args:
        values: ``[R, N]`` logits of each rewarded pair's competitors (its own entry included).
        own: ``[R]`` column of the pair's own entry.
    """
    if not include_self:
        if values.shape[1] < 2:
            raise ValueError("the contrastive reward needs at least two texts and two images in the pool")
        values = values.clone()
        values[torch.arange(values.shape[0]), own] = float("-inf")
    return torch.logsumexp(values, dim=1)


def bidirectional_contrastive_reward(sim: Tensor, text_index: Tensor, image_index: Tensor, scale: float = 100.0,
                                     clamp: float | None = 16.0, include_self: bool = False,
                                     directions: str = "both") -> Tensor:
    """Contrastive reward of the pairs ``(text_index[r], image_index[r])`` in a pool.

    Args:
        sim: ``[T, I]`` cosine similarities of every pool text with every pool image.
        text_index: ``[R]`` rows of the rewarded texts.
        image_index: ``[R]`` columns of their true images.
        scale: logit scale applied to ``sim`` and divided out at the end (100 as CLIP's).
        clamp: upper bound of each direction's term in logit units (16), ``None`` for none.
        include_self: put the true entry in the denominators (log-softmax) instead of leaving it out.
        directions: ``"both"`` (the paper), ``"text"`` (texts compete at the image) or ``"image"``.
    Returns:
        ``[R]`` rewards (no grad).
    """
    if directions not in ("both", "text", "image"):
        raise ValueError(f"directions must be 'both', 'text' or 'image', got '{directions}'")
    logits = scale * sim.detach().float()
    t, i = text_index.long(), image_index.long()
    terms = []
    if directions in ("both", "text"):
        terms.append(logits[t, i] - _log_others(logits[:, i].t(), t, include_self))
    if directions in ("both", "image"):
        terms.append(logits[t, i] - _log_others(logits[t], i, include_self))
    if clamp is not None:
        terms = [x.clamp(max=clamp) for x in terms]
    return torch.stack(terms).mean(0) / scale


def normalized_contrastive_term(image_feats: Tensor, text_feats: Tensor, temperature: float = 1.0,
                                eps: float = 1e-8) -> Tensor:
    """VLRM-RS eq. 5: ``Phi [B]`` for ``B`` matching ``(image_k, text_k)`` pairs.

    ``S[i, j] = cos(image_i, text_j) / temperature`` (temperature 1: the equation's raw cosines),
    ``D = diag(softmax(S, 0) * softmax(S, 1))``, ``Phi = (D - mean D) / std D``. Zeros when ``B < 2``.
    """
    if image_feats.shape[0] < 2:
        return torch.zeros(image_feats.shape[0], device=image_feats.device)
    s = cosine_matrix(image_feats, text_feats).detach() / temperature
    d = (torch.softmax(s, dim=0) * torch.softmax(s, dim=1)).diagonal()
    return (d - d.mean()) / (d.std() + eps)
