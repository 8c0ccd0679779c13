"""C-TPT (Yoon et al., ICLR'24): TPT's marginal entropy minus the dispersion of the prompt's class features."""
from __future__ import annotations

from dataclasses import dataclass

from torch import Tensor

from rlcf import AdaptConfig, DiscretePolicy, Episode, Method, register_method
from rlcf.losses import marginal_entropy

__all__ = ["CTPT", "CTPTOptions", "text_dispersion"]


def text_dispersion(text_feats: Tensor) -> Tensor:
    """C-TPT's ATFD: mean L2 distance of normalised class features ``[C, D]`` to their centroid."""
    return (text_feats - text_feats.mean(0, keepdim=True)).norm(dim=-1).mean()


@dataclass(frozen=True)
class CTPTOptions:
    """``ctpt_lambda``: the ATFD weight (20 for ImageNet variants, 50 for fine-grained sets)."""

    ctpt_lambda: float = 20.0


@register_method("ctpt")
class CTPT(Method):
    """C-TPT (Yoon et al., ICLR'24): TPT's marginal entropy minus ``lambda * ATFD`` of the prompt's
    class text features (``options.ctpt_lambda``). Episodic; needs a prompt policy (``class_features()``
    with grad)."""

    Options = CTPTOptions
    batchable = False   # its loss needs the prompt's class features too: a batch runs sample by sample
    default_config = AdaptConfig(steps=1, lr=5e-3, selection=0.1)

    @classmethod
    def supports(cls, policy) -> bool:   # the text side (prompt) must be trainable
        return isinstance(policy, DiscretePolicy) and not policy.query_trainable and hasattr(policy, "class_features")

    def loss(self, ep: Episode, step: int) -> Tensor:
        feats = self.policy.class_features()
        logits = self.policy.selected_logits(ep, class_feats=feats)
        return marginal_entropy(logits) - self.options.ctpt_lambda * text_dispersion(feats)
