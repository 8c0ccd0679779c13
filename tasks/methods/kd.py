"""Knowledge distillation from the reward CLIP (the official RLCF KD baseline)."""
from __future__ import annotations

from dataclasses import dataclass

from torch import Tensor

from rlcf import AdaptConfig, DiscretePolicy, Episode, Method, register_method
from rlcf.losses import softmax_ce

__all__ = ["KD", "KDOptions"]


@dataclass(frozen=True)
class KDOptions:
    """``kd_temperature``: the distillation temperature T (official 1)."""

    kd_temperature: float = 1.0


@register_method("kd")
class KD(Method):
    """Knowledge distillation from the reward CLIP (official RLCF KD baseline): the teacher's
    logits ``logit_scale * cos`` over the confident views; soft cross-entropy at temperature T
    (``options.kd_temperature``). Episodic. The reward object provides the teacher."""

    needs_reward = True
    Options = KDOptions
    default_config = AdaptConfig(steps=3, lr=1e-5, selection=0.1)

    @classmethod
    def supports(cls, policy) -> bool:
        return isinstance(policy, DiscretePolicy)

    def loss(self, ep: Episode, step: int) -> Tensor:
        logits = self.policy.selected_logits(ep)
        t = self.options.kd_temperature
        teacher = self.reward.teacher_logits(ep.selected_inputs)
        target = (teacher.to(logits.device) / t).softmax(-1)
        return softmax_ce(logits, target, t)
