"""The public entry point ``rlcf.adapt(model, sample, ...)``."""
from __future__ import annotations

from typing import Any

from torch import Tensor, nn

from .engine import AdaptConfig, Method
from .methods import create_method

__all__ = ["adapt"]


def adapt(model: nn.Module | Method, sample: Tensor, method: str = "rlcf", reward: Any = None,
          config: AdaptConfig | None = None, **overrides: Any) -> Tensor:
    """Adapt ``model`` on one test sample, predict, and restore the model bit-exactly.

    Works inside the caller's ``torch.no_grad()`` (gradients are enabled internally; never call it
    under ``torch.inference_mode()``).

    Args:
        model: a policy (e.g. ``tasks.classification.PromptPolicy``) or an already built
            :class:`~rlcf.engine.Method` (cheaper in a loop: its optimizer and snapshot are reused).
        sample: ``[V, 3, H, W]`` pre-made views of one image (view 0 = the clean view used for the
            prediction) or a single ``[3, H, W]`` image.
        method: registered method name (``rlcf.list_methods()``), ignored if ``model`` is a Method.
        reward: reward callable for reward-based methods (:class:`rlcf.CLIPReward`, ...).
        config: hyperparameters; ``**overrides`` change single fields (``steps=1``).
    Returns:
        ``[C]`` logits of the clean view after adaptation.
    """
    if isinstance(model, Method):
        if config is not None or overrides:
            raise ValueError("pass config/overrides when building the Method, not to adapt()")
        return model(sample)
    return create_method(method, model, reward, config, **overrides)(sample)
