"""Rewards from a frozen reward CLIP: CLIPScore ``w * max(cos, 0)``, cached features, ensembles.

A reward is a plain callable ``reward(candidates) -> [B, K]`` once the sample's query has been
set with ``reward.set_query(...)``. Candidates are either indices into a cached candidate set
(class prompts, a retrieval gallery: ``[B, K]`` long tensor) or ``B`` lists of ``K`` strings
(generated captions).
"""
from __future__ import annotations

import logging
from typing import Callable, Protocol, Sequence, runtime_checkable

import torch
import torch.nn.functional as F
from torch import Tensor, nn

logger = logging.getLogger(__name__)

__all__ = ["clip_score", "CLIPLike", "CLIPReward", "EnsembleReward", "Reward", "input_resolution"]


@runtime_checkable
class CLIPLike(Protocol):
    """The small model contract of open_clip."""

    logit_scale: Tensor

    def encode_image(self, image: Tensor, normalize: bool = False) -> Tensor: ...

    def encode_text(self, text: Tensor, normalize: bool = False) -> Tensor: ...


class Reward(Protocol):
    def set_query(self, query: Tensor | Sequence[str]) -> None: ...

    def __call__(self, candidates: Tensor | Sequence[Sequence[str]]) -> Tensor: ...


def clip_score(image_feats: Tensor, text_feats: Tensor, weight: float = 2.5) -> Tensor:
    """CLIPScore of matching pairs: ``weight * max(cos(image, text), 0)``.

    Args:
        image_feats: ``[..., D]`` features (need not be normalised).
        text_feats: ``[..., D]`` features, broadcastable with ``image_feats``.
        weight: the CLIPScore weight ``w`` (2.5 in Hessel et al. and RLCF).
    Returns:
        ``[...]`` scores in ``[0, weight]``.
    """
    cos = (F.normalize(image_feats.float(), dim=-1) * F.normalize(text_feats.float(), dim=-1)).sum(-1)
    return weight * cos.clamp(min=0.0)


def input_resolution(model: nn.Module) -> int | None:
    """Square input size of an open_clip visual tower (``None`` if unknown)."""
    size = getattr(getattr(model, "visual", None), "image_size", None)
    if size is None:
        return None
    return int(size[0] if isinstance(size, (tuple, list)) else size)


class CLIPReward:
    """CLIPScore reward from one frozen CLIP with cached features.

    * candidate features (class prompts or a gallery) are encoded once: :meth:`set_candidates`;
    * the query (the selected views of a test image, or a caption) once per sample: :meth:`set_query`;
    * ``self(candidates)`` scores ``[B, K]`` candidates against the ``B`` query rows.

    Args:
        model: a frozen open_clip-style model (put in eval mode, gradients off).
        tokenizer: ``list[str] -> LongTensor[N, L]``, needed for text queries/candidates.
        weight: CLIPScore weight.
        policy_resolution: input size the images arrive at; images are resized bicubically
            (``align_corners=True``, as the official code) to the reward model's own size when it differs.
        batch_size: chunk size for encoding many texts/images.
    """

    def __init__(self, model: nn.Module, tokenizer: Callable[[list[str]], Tensor] | None = None,
                 weight: float = 2.5, policy_resolution: int | None = None, batch_size: int = 256) -> None:
        self.model = model.eval().requires_grad_(False)
        self.tokenizer = tokenizer
        self.weight = weight
        self.resolution = input_resolution(model)
        self.policy_resolution = policy_resolution
        self.batch_size = batch_size
        self.candidate_feats: Tensor | None = None
        self.query_feats: Tensor | None = None
        self.encode_calls = 0

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    @torch.no_grad()
    def encode_images(self, images: Tensor) -> Tensor:
        """``[N, 3, H, W]`` -> normalised ``[N, D]`` (float32)."""
        if images.dim() != 4:
            raise ValueError(f"reward images must be [N, 3, H, W], got {tuple(images.shape)}")
        images = images.to(self.device)
        if self.resolution is not None and images.shape[-1] != self.resolution:
            images = F.interpolate(images.float(), size=self.resolution, mode="bicubic", align_corners=True)
        self.encode_calls += 1
        out = [self.model.encode_image(images[i:i + self.batch_size]).float()
               for i in range(0, images.shape[0], self.batch_size)]
        return F.normalize(torch.cat(out), dim=-1)

    @torch.no_grad()
    def encode_texts(self, texts: Sequence[str] | Tensor) -> Tensor:
        """List of strings (or token ids ``[N, L]``) -> normalised ``[N, D]`` (float32)."""
        if isinstance(texts, Tensor):
            tokens = texts
        else:
            if self.tokenizer is None:
                raise ValueError("CLIPReward needs a tokenizer to encode text")
            tokens = self.tokenizer(list(texts))
        tokens = tokens.to(self.device)
        self.encode_calls += 1
        out = [self.model.encode_text(tokens[i:i + self.batch_size]).float()
               for i in range(0, tokens.shape[0], self.batch_size)]
        return F.normalize(torch.cat(out), dim=-1)

    def _encode(self, x: Tensor | Sequence[str]) -> Tensor:
        if isinstance(x, Tensor) and x.is_floating_point():
            return self.encode_images(x)
        return self.encode_texts(x)

    def set_candidates(self, candidates: Tensor | Sequence[str]) -> None:
        """Cache the candidate set once per dataset: class prompts / gallery texts (strings or
        token ids) or gallery images (float ``[N, 3, H, W]``) or precomputed features via
        :meth:`set_candidate_features`."""
        self.candidate_feats = self._encode(candidates)

    def set_candidate_features(self, feats: Tensor) -> None:
        self.candidate_feats = F.normalize(feats.float().to(self.device), dim=-1)

    def set_query(self, query: Tensor | Sequence[str]) -> None:
        """Encode the sample's query once: images ``[B, 3, H, W]`` or ``B`` strings."""
        self.query_feats = self._encode(query)

    @torch.no_grad()
    def teacher_logits(self) -> Tensor:
        """``logit_scale.exp() * query @ candidates^T``: ``[B, N]`` logits of the reward CLIP (KD teacher)."""
        if self.query_feats is None or self.candidate_feats is None:
            raise RuntimeError("set_candidates(...) and set_query(...) first")
        return self.model.logit_scale.exp().float() * self.query_feats @ self.candidate_feats.t()

    @torch.no_grad()
    def __call__(self, candidates: Tensor | Sequence[Sequence[str]]) -> Tensor:
        """Rewards ``[B, K]`` for ``[B, K]`` candidate indices or ``B`` lists of ``K`` strings."""
        if self.query_feats is None:
            raise RuntimeError("call set_query(...) with the sample before computing rewards")
        q = self.query_feats
        if isinstance(candidates, Tensor):
            if self.candidate_feats is None:
                raise RuntimeError("call set_candidates(...) before scoring candidate indices")
            cand = self.candidate_feats[candidates.to(self.device)]             # [B, K, D]
        else:
            rows = [list(r) for r in candidates]
            k = len(rows[0])
            if any(len(r) != k for r in rows):
                raise ValueError("every query needs the same number K of text candidates")
            cand = self.encode_texts([t for r in rows for t in r]).view(len(rows), k, -1)
        if cand.shape[0] != q.shape[0]:
            raise ValueError(f"{cand.shape[0]} candidate rows for {q.shape[0]} query rows")
        return clip_score(q[:, None, :], cand, self.weight)


class EnsembleReward:
    """Weighted sum of several rewards (official "-S": weights normalised, rounded to 2 decimals).

    Args:
        rewards: the member rewards (each with its own cache).
        weights: raw confidences (official 10 / 3 / 5 for L/14@336, RN50x64, L/14); normalised to
            sum 1 and rounded to ``round_to`` decimals as the official code does.
        round_to: decimals, or ``None`` for exact normalisation.
    """

    def __init__(self, rewards: Sequence[CLIPReward], weights: Sequence[float] | None = None,
                 round_to: int | None = 2) -> None:
        if not rewards:
            raise ValueError("EnsembleReward needs at least one reward model")
        weights = list(weights) if weights is not None else [1.0] * len(rewards)
        if len(weights) != len(rewards):
            raise ValueError(f"{len(weights)} weights for {len(rewards)} reward models")
        total = float(sum(weights))
        w = [x / total for x in weights]
        self.weights = [round(x, round_to) for x in w] if round_to is not None else w
        self.rewards = list(rewards)

    def set_candidates(self, candidates: Tensor | Sequence[str]) -> None:
        for r in self.rewards:
            r.set_candidates(candidates)

    def set_query(self, query: Tensor | Sequence[str]) -> None:
        for r in self.rewards:
            r.set_query(query)

    def teacher_logits(self) -> Tensor:
        """Weighted sum of the members' teacher logits ``[B, N]``."""
        return sum(w * r.teacher_logits() for w, r in zip(self.weights, self.rewards))

    def __call__(self, candidates: Tensor | Sequence[Sequence[str]]) -> Tensor:
        out = None
        for w, r in zip(self.weights, self.rewards):
            s = w * r(candidates)
            out = s if out is None else out + s.to(out.device)
        return out
