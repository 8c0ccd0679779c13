"""Rewards from a frozen reward CLIP: CLIPScore ``w * max(cos, 0)``, cached features, ensembles.

A reward is a plain, stateless callable (TRL-style)::

    rewards = reward(query, candidates)      # [B, K]

``query``: the ``B`` query rows (images ``[B, 3, H, W]``, or ``B`` strings); ``candidates``: ``[B, K]``
indices into the candidate set cached once per dataset (class prompts, a retrieval gallery:
:meth:`CLIPReward.set_candidates`), or ``B`` lists of ``K`` strings (generated captions). Caching stays
inside: the candidate features once per dataset, the query features once per sample, keyed by the query
itself (the same tensor object, unmodified, or the same strings), never by a flag the caller sets. A reward model
also declares ``reward.prefetch(queries)`` (:class:`Reward`): the engine calls it with the B queries of a batch
before their steps, so they are encoded in one pass.
"""
from __future__ import annotations

import logging
from typing import Any, Callable, Protocol, Sequence, runtime_checkable

import torch
import torch.nn.functional as F
from torch import Tensor, nn

logger = logging.getLogger(__name__)

__all__ = ["clip_score", "CLIPLike", "CLIPReward", "EnsembleReward", "Reward", "input_resolution", "input_norm",
           "encode_batched"]


@runtime_checkable
class CLIPLike(Protocol):
    """The small model contract of open_clip."""

    logit_scale: Tensor

    def encode_image(self, image: Tensor, normalize: bool = False) -> Tensor: ...

    def encode_text(self, text: Tensor, normalize: bool = False) -> Tensor: ...


@runtime_checkable
class Reward(Protocol):
    """A reward model: ``reward(query, candidates) -> [B, K]`` and :meth:`prefetch`. A plain function
    ``(query, candidates) -> [B, K]`` also serves as a reward; it has nothing to prefetch."""

    def __call__(self, query: Tensor | Sequence[str], candidates: Tensor | Sequence[Sequence[str]]) -> Tensor: ...

    def prefetch(self, queries: Sequence[Tensor | Sequence[str]]) -> None:
        """Encode the queries of several episodes (the B samples of a batch) in one pass before their steps; each
        later call with one of these query objects reuses the features."""


@torch.no_grad()
def encode_batched(encode: Callable[[Any], Tensor], inputs: Tensor | Sequence[Any], batch_size: int = 256,
                   normalize: bool = True, progress: str | None = None) -> Tensor:
    """``encode`` over ``inputs`` (a tensor or a sequence) in chunks of ``batch_size``: ``[N, D]`` float32,
    L2-normalised unless ``normalize=False``; ``progress`` names a progress bar. The one batched-encode loop
    of the toolkit."""
    if len(inputs) == 0:
        raise ValueError("nothing to encode: empty input")
    starts = range(0, len(inputs), batch_size)
    if progress is not None:
        from tqdm.auto import tqdm

        starts = tqdm(starts, desc=progress, mininterval=5)
    out = [encode(inputs[i:i + batch_size]).float() for i in starts]
    x = torch.cat(out)
    return F.normalize(x, dim=-1) if normalize else x


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


def input_norm(model: nn.Module) -> tuple[tuple[float, ...], tuple[float, ...]] | None:
    """``(mean, std)`` a model's images are normalised with (``visual.image_mean`` / ``image_std``, set by
    open_clip and the HF wrapper), or ``None`` if it does not say."""
    visual = getattr(model, "visual", None)
    mean, std = getattr(visual, "image_mean", None), getattr(visual, "image_std", None)
    if mean is None or std is None:
        return None
    return tuple(float(m) for m in mean), tuple(float(s) for s in std)


def input_resolution(model: nn.Module) -> int | None:
    """Square input size of an open_clip visual tower (``None`` if unknown)."""
    size = getattr(getattr(model, "visual", None), "image_size", None)
    if size is None:
        return None
    return int(size[0] if isinstance(size, (tuple, list)) else size)


class CLIPReward:
    """CLIPScore reward from one frozen CLIP with cached features (see the module docstring).

    Args:
        model: a frozen open_clip-style model (put in eval mode; it is only run under ``no_grad``).
        tokenizer: ``list[str] -> LongTensor[N, L]``, needed for text queries/candidates.
        weight: CLIPScore weight.
        batch_size: chunk size for encoding many texts/images.
        input_norm: ``(mean, std)`` the query images arrive normalised with (the policy's,
            :func:`input_norm` of the policy model); ``None``: already the reward model's.

    Images are resized bicubically (``align_corners=True``, as the official code) to the reward
    model's own input size when they arrive at another one (RLCF-S: 336 / 448 px members), and
    re-normalised to the reward model's mean / std when ``input_norm`` differs from them (a SigLIP
    reward, mean = std = 0.5, behind an OpenAI-normalised CLIP policy). Between two OpenAI CLIPs (the
    paper's setting) both are no-ops on the normalisation.
    """

    def __init__(self, model: nn.Module, tokenizer: Callable[[list[str]], Tensor] | None = None,
                 weight: float = 2.5, batch_size: int = 256,
                 input_norm: tuple[Sequence[float], Sequence[float]] | None = None) -> None:
        self.model = model.eval()
        self.tokenizer = tokenizer
        self.weight = weight
        self.resolution = input_resolution(model)
        self._renorm: tuple[Tensor, Tensor] | None = None
        self.set_input_norm(input_norm)
        self.batch_size = batch_size
        self.candidate_feats: Tensor | None = None
        self._queries: dict[Any, tuple[Any, int | None, Tensor]] = {}   # key -> (query, version, features)
        self.cache_size = 8
        self.encode_calls = 0

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    def set_input_norm(self, norm: tuple[Sequence[float], Sequence[float]] | None) -> None:
        """Declare the ``(mean, std)`` query images arrive with; ``x * a + b`` maps them to the reward's own."""
        own = input_norm(self.model)
        self._renorm = None
        if norm is None or own is None:
            return
        (m_in, s_in), (m, s) = [(torch.tensor(a, dtype=torch.float32), torch.tensor(b, dtype=torch.float32))
                                for a, b in (norm, own)]
        if torch.allclose(m_in, m) and torch.allclose(s_in, s):
            return
        a = s_in / s                     # (x * s_in + m_in - m) / s
        self._renorm = (a.view(1, -1, 1, 1), ((m_in - m) / s).view(1, -1, 1, 1))

    @torch.no_grad()
    def encode_images(self, images: Tensor) -> Tensor:
        """``[N, 3, H, W]`` -> normalised ``[N, D]`` (float32)."""
        if images.dim() != 4:
            raise ValueError(f"reward images must be [N, 3, H, W], got {tuple(images.shape)}")
        images = images.to(self.device)
        if self.resolution is not None and images.shape[-1] != self.resolution:
            images = F.interpolate(images.float(), size=self.resolution, mode="bicubic", align_corners=True)
        if self._renorm is not None:
            a, b = (t.to(images.device) for t in self._renorm)
            images = (images.float() * a + b).to(images.dtype)
        self.encode_calls += 1
        return encode_batched(self.model.encode_image, images, self.batch_size)

    @torch.no_grad()
    def encode_texts(self, texts: Sequence[str] | Tensor) -> Tensor:
        """List of strings (or token ids ``[N, L]``) -> normalised ``[N, D]`` (float32)."""
        if isinstance(texts, Tensor):
            tokens = texts
        else:
            if self.tokenizer is None:
                raise ValueError("CLIPReward needs a tokenizer to encode text")
            tokens = self.tokenizer(list(texts))
        self.encode_calls += 1
        return encode_batched(self.model.encode_text, tokens.to(self.device), self.batch_size)

    def _encode(self, x: Tensor | Sequence[str]) -> Tensor:
        if isinstance(x, Tensor) and x.is_floating_point():
            return self.encode_images(x)
        return self.encode_texts(x)

    def set_candidates(self, candidates: Tensor | Sequence[str]) -> None:
        """Cache the candidate set once per dataset: class prompts / gallery texts (strings or
        token ids) or gallery images (float ``[N, 3, H, W]``), or precomputed features via
        :meth:`set_candidate_features`."""
        self.candidate_feats = self._encode(candidates)

    def set_candidate_features(self, feats: Tensor) -> None:
        self.candidate_feats = F.normalize(feats.float().to(self.device), dim=-1)

    @staticmethod
    def _key(query: Tensor | tuple[str, ...]) -> Any:
        return ("tensor", id(query)) if isinstance(query, Tensor) else ("text", query)

    def _cached(self, query: Tensor | tuple[str, ...]) -> Tensor | None:
        hit = self._queries.get(self._key(query))
        if hit is None:
            return None
        q, version, feats = hit
        if isinstance(query, Tensor) and (q is not query or query._version != version):
            return None
        return feats

    def _store(self, query: Tensor | tuple[str, ...], feats: Tensor) -> None:
        if len(self._queries) >= self.cache_size:
            self._queries.pop(next(iter(self._queries)))
        self._queries[self._key(query)] = (query, query._version if isinstance(query, Tensor) else None, feats)

    @staticmethod
    def _as_key(query: Tensor | str | Sequence[str]) -> Tensor | tuple[str, ...]:
        if isinstance(query, str):
            return (query,)
        return query if isinstance(query, Tensor) else tuple(query)

    def query_features(self, query: Tensor | Sequence[str]) -> Tensor:
        """Normalised ``[B, D]`` features of the query rows (images or strings), encoded once per query:
        the same (unmodified) tensor object, or the same strings, reuse the cached features (the last
        ``cache_size`` queries are kept, so a batch of episodes shares the cache)."""
        key = self._as_key(query)
        feats = self._cached(key)
        if feats is None:
            feats = self._encode(key if isinstance(key, Tensor) else list(key))
            self._store(key, feats)
        return feats

    def prefetch(self, queries: Sequence[Tensor | Sequence[str]]) -> None:
        """Encode several queries (e.g. the B samples of a batch) in one pass and cache each."""
        keys = [self._as_key(q) for q in queries]
        self.cache_size = max(self.cache_size, 2 * len(keys))   # a batch's queries stay cached all its steps
        todo = [k for k in keys if self._cached(k) is None]
        if not todo:
            return
        if all(isinstance(k, Tensor) and k.is_floating_point() for k in todo):
            feats = self.encode_images(torch.cat(todo))
        elif all(not isinstance(k, Tensor) for k in todo):
            feats = self.encode_texts([t for k in todo for t in k])
        else:
            for k in todo:
                self.query_features(k)
            return
        for k, f in zip(todo, feats.split([len(k) for k in todo])):
            self._store(k, f)

    @torch.no_grad()
    def teacher_logits(self, query: Tensor | Sequence[str]) -> Tensor:
        """``logit_scale.exp() * query @ candidates^T``: ``[B, N]`` logits of the reward CLIP (KD teacher)."""
        if self.candidate_feats is None:
            raise RuntimeError("call set_candidates(...) before asking for teacher logits")
        return self.model.logit_scale.exp().float() * self.query_features(query) @ self.candidate_feats.t()

    @torch.no_grad()
    def __call__(self, query: Tensor | Sequence[str], candidates: Tensor | Sequence[Sequence[str]]) -> Tensor:
        """Rewards ``[B, K]`` of ``[B, K]`` candidate indices or ``B`` lists of ``K`` strings for the ``B`` query rows."""
        q = self.query_features(query)
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

    def prefetch(self, queries: Sequence[Tensor | Sequence[str]]) -> None:
        for r in self.rewards:
            if isinstance(r, Reward):
                r.prefetch(queries)

    def teacher_logits(self, query: Tensor | Sequence[str]) -> Tensor:
        """Weighted sum of the members' teacher logits ``[B, N]``."""
        return sum(w * r.teacher_logits(query) for w, r in zip(self.weights, self.rewards))

    def __call__(self, query: Tensor | Sequence[str], candidates: Tensor | Sequence[Sequence[str]]) -> Tensor:
        out = None
        for w, r in zip(self.weights, self.rewards):
            s = w * r(query, candidates)
            out = s if out is None else out + s.to(out.device)
        return out
