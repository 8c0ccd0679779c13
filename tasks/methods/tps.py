"""TPS (Sui et al., 2024): test-time shift of cached class prototypes, one step of TPT's entropy loss, episodic."""
from __future__ import annotations

from torch import Tensor

from rlcf import AdaptConfig, Episode, Method, register_method
from rlcf.losses import marginal_entropy

__all__ = ["TPS"]


@register_method("tps")
class TPS(Method):
    """TPS (Sui et al., 2024): a per-class shift of the cached class prototypes (``policy=prototype``,
    zero-initialised), one AdamW step of TPT's marginal entropy over the 10% most confident views, predict on
    view 0 with the shifted prototypes. Episodic: the shift and the optimizer reset for every sample; no text
    pass at test time. The official ``shift_classification.py`` with ``--text_shift --do_shift --per_label``."""

    default_config = AdaptConfig(steps=1, lr=5e-3, weight_decay=0.01, selection=0.1)

    @classmethod
    def supports(cls, policy) -> bool:   # the prototype policy (tasks.classification.policies.PrototypePolicy)
        params = getattr(policy, "trainable_parameters", lambda: {})()
        return hasattr(policy, "prototypes") and set(params) == {"shift"}

    def loss(self, ep: Episode, step: int) -> Tensor:
        return marginal_entropy(self.policy.selected_logits(ep))
