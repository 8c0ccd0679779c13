"""BoostAdapter (Zhang et al., NeurIPS'24): TDA's caches plus a per-sample boosting cache of confident views; online."""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

from rlcf import Episode, register_method
from rlcf.losses import entropy, marginal_entropy, select_confident

from .tda import TDA, TDACache, TDAOptions

__all__ = ["BoostAdapter", "BoostAdapterOptions", "FIFOCache", "boosting_cache"]


class FIFOCache(TDACache):
    """A cache that keeps each class's latest ``capacity`` entries (BoostAdapter's negative cache: its
    ``update_cache`` with the default ``fifo=True``)."""

    def update(self, pred: int, feat: Tensor, loss: float, extra: Tensor | None = None) -> None:
        entries = self.items.setdefault(pred, [])
        entries.append((feat, loss, extra))
        if len(entries) > self.capacity:
            del entries[0]


def boosting_cache(history: TDACache, feats: Tensor, logits: Tensor, fraction: float, delta: int) -> TDACache:
    """The sample's positive cache (official ``runner.py``, ``--mode boostadapter``): a copy of the historical one
    with ``delta`` more entries per class, plus the sample's ``int(V * fraction)`` lowest-entropy views (the
    clean one among the candidates), each under its own argmax and entropy, lowest entropy kept.

    Args:
        history: the historical positive cache (already updated with the sample).
        feats: ``[V, D]`` the sample's view features; ``logits``: ``[V, C]`` their logits.
        fraction: the boosting views' fraction (official 0.1; no minimum: fewer than 10 views boost nothing).
        delta: the extra capacity per class (official per dataset).
    """
    boost = TDACache(history.capacity + delta)
    boost.items = {k: list(v) for k, v in history.items.items()}
    order = torch.argsort(entropy(logits), descending=False)[:int(len(logits) * fraction)]
    ents = entropy(logits[order])
    for j, e in zip(order.tolist(), ents.tolist()):
        boost.update(int(logits[j].argmax()), feats[j], e)
    return boost


@dataclass(frozen=True)
class BoostAdapterOptions(TDAOptions):
    """TDA's cache settings plus: ``delta``, the boosting cache's extra capacity per class (official per dataset,
    e.g. 3 on A and R); ``boost_selection``, the boosting views' fraction (0.1); ``view0_history``: the historical
    caches and the CLIP logits from view 0 alone while every view boosts (the official fine-grained branch,
    ``infer_ori_image``); ``neg_fifo``: the negative cache keeps its latest entries (official), else TDA's
    lowest-entropy ones."""

    delta: int = 3
    boost_selection: float = 0.1
    view0_history: bool = False
    neg_fifo: bool = True


@register_method("boostadapter")
class BoostAdapter(TDA):
    """BoostAdapter (Zhang et al., NeurIPS'24): TDA's positive and negative caches (historical samples, online)
    plus, per sample, a boosting cache: a copy of the positive cache with ``delta`` more entries per class that
    also holds the sample's 10% lowest-entropy regional views. Training-free; online (the historical caches are its
    stream state; the boosting samples are the sample's own)."""

    Options = BoostAdapterOptions

    def reset_stream(self) -> None:
        """Empty the historical caches (start of a new stream)."""
        super().reset_stream()
        if self.options.neg_fifo:
            self.neg = FIFOCache(self.options.neg_capacity)

    def predict(self, ep: Episode) -> Tensor:
        o, p, views = self.options, self.policy, ep.inputs
        q = p.encode_query(views).float()
        logits = p.logits(q).float()
        c = logits.shape[-1]
        if len(views) > 1 and not o.view0_history:
            sel = select_confident(logits, self.config.selection)
            feat, out = q[sel].mean(0), logits[sel]
            clip_logits, loss, prob = out.mean(0), float(marginal_entropy(out)), out.softmax(-1).mean(0)
        else:
            feat, clip_logits = q[0], logits[0]
            loss, prob = float(entropy(logits[:1])[0]), logits[0].softmax(-1)
        pred = int(clip_logits.argmax())
        self.pos.update(pred, feat, loss)
        lo, hi = o.neg_entropy
        if lo < loss / math.log2(c) < hi:
            self.neg.update(pred, feat, loss, prob)
        boost = boosting_cache(self.pos, q, logits, o.boost_selection, o.delta)
        final = clip_logits + boost.logits(feat, o.pos_alpha, o.pos_beta, c)
        if self.neg.items:
            final -= self.neg.logits(feat, o.neg_alpha, o.neg_beta, c, tuple(o.neg_mask))
        ep.info["pos_size"] = sum(len(v) for v in self.pos.items.values())
        ep.info["boost_size"] = sum(len(v) for v in boost.items.values())
        return final
