"""TDA (Karmanov et al., CVPR'24): training-free positive and negative feature caches (online)."""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from rlcf import AdaptConfig, DiscretePolicy, Episode, Method, register_method
from rlcf.losses import entropy, marginal_entropy, select_confident

__all__ = ["TDA", "TDAOptions", "TDACache"]


class TDACache:
    """TDA's positive or negative cache: up to ``capacity`` (feature, entropy[, prob map]) per class,
    lowest entropy kept (official ``update_cache``)."""

    def __init__(self, capacity: int) -> None:
        self.capacity, self.items = capacity, {}

    def update(self, pred: int, feat: Tensor, loss: float, extra: Tensor | None = None) -> None:
        item = (feat, loss, extra)
        entries = self.items.setdefault(pred, [])
        if not entries:
            entries.append(item)
        elif len(entries) < self.capacity:
            entries.append(item)
        elif loss < entries[-1][1]:
            entries[-1] = item
        entries.sort(key=lambda x: x[1])

    def logits(self, feat: Tensor, alpha: float, beta: float, num_classes: int,
               mask: tuple[float, float] | None = None) -> Tensor:
        keys, values = [], []
        for c in sorted(self.items):
            for f, _, prob in self.items[c]:
                keys.append(f)
                if mask is None:
                    values.append(F.one_hot(torch.tensor(c), num_classes).float())
                else:
                    values.append(((prob > mask[0]) & (prob < mask[1])).float())
        k, v = torch.stack(keys), torch.stack(values).to(feat.device)
        affinity = feat @ k.t()
        return alpha * ((-1.0) * (beta - beta * affinity)).exp() @ v


@dataclass(frozen=True)
class TDAOptions:
    """TDA's cache settings (ImageNet defaults; per-dataset alpha / beta in ``configs/classification/tda.yaml``)."""

    pos_capacity: int = 3
    pos_alpha: float = 2.0
    pos_beta: float = 5.0
    neg_capacity: int = 2
    neg_alpha: float = 0.117
    neg_beta: float = 1.0
    neg_entropy: tuple[float, float] = (0.2, 0.5)
    neg_mask: tuple[float, float] = (0.03, 1.0)


@register_method("tda")
class TDA(Method):
    """TDA (Karmanov et al., CVPR'24): training-free positive/negative feature caches. **Online**:
    the caches are its stream state (:meth:`reset_stream`, :meth:`stream_state`).

    Multi-view samples keep the 10% most confident views (features and logits averaged, as the
    official ``get_clip_logits``); single-view samples use the view itself.
    """

    episodic = False
    Options = TDAOptions
    default_config = AdaptConfig(steps=0, selection=0.1)

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.reset_stream()

    @classmethod
    def supports(cls, policy) -> bool:
        return isinstance(policy, DiscretePolicy)

    def reset_stream(self) -> None:
        """Empty both caches (start of a new stream)."""
        super().reset_stream()
        self.pos, self.neg = TDACache(self.options.pos_capacity), TDACache(self.options.neg_capacity)

    def stream_state(self) -> dict[str, Any]:
        return {**super().stream_state(), "pos": dict(self.pos.items), "neg": dict(self.neg.items)}

    def load_stream_state(self, state: dict[str, Any]) -> None:
        super().load_stream_state(state)
        self.pos.items = {int(k): list(v) for k, v in state["pos"].items()}
        self.neg.items = {int(k): list(v) for k, v in state["neg"].items()}

    def predict(self, ep: Episode) -> Tensor:
        o, p, views = self.options, self.policy, ep.inputs
        q = p.encode_query(views).float()
        logits = p.logits(q).float()
        c = logits.shape[-1]
        if len(views) > 1:
            sel = select_confident(logits, self.config.selection)
            feat, out = q[sel].mean(0), logits[sel]
            clip_logits, loss = out.mean(0), float(marginal_entropy(out))
            prob = out.softmax(-1).mean(0)
        else:
            feat, clip_logits = q[0], logits[0]
            loss, prob = float(entropy(logits)[0]), logits[0].softmax(-1)
        pred = int(clip_logits.argmax())
        prop_entropy = loss / math.log2(c)   # official normalisation (natural-log entropy / log2 C)
        self.pos.update(pred, feat, loss)
        lo, hi = o.neg_entropy
        if lo < prop_entropy < hi:
            self.neg.update(pred, feat, loss, prob)
        final = clip_logits.clone()
        if self.pos.items:
            final += self.pos.logits(feat, o.pos_alpha, o.pos_beta, c)
        if self.neg.items:
            final -= self.neg.logits(feat, o.neg_alpha, o.neg_beta, c, tuple(o.neg_mask))
        ep.info["pos_size"] = sum(len(v) for v in self.pos.items.values())
        return final
