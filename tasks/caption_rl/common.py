"""What both recipes share: the batch, the step result, the reward-CLIP text encoding, parameter groups.

A recipe turns a :class:`Batch` into ``(loss, parameters)`` pairs: each parameter group is updated by the
gradient of its own loss only (:func:`tasks.caption_rl.a2c.assign_isolated_grads`), so e.g. the value head
never sees the policy loss. The training loop owns the optimiser, clipping, schedule and checkpoints.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Protocol, Sequence

import torch
from torch import Tensor, nn

from rlcf import CLIPReward
from tasks.captioning.model import PrefixCaptioner

__all__ = ["Batch", "StepResult", "Recipe", "clip_texts", "encode_reward_texts", "policy_parameters",
           "frozen_parameters"]


@dataclass
class Batch:
    """One training batch of ``B`` images.

    Attributes:
        index: ``[B]`` images (rows of the per-image tensors of :class:`tasks.caption_rl.data.RLData`).
        prefix_feats: ``[B, Dp]`` captioner inputs (policy-CLIP image embeddings).
        reward_feats: ``[B, Dr]`` reward-CLIP image embeddings.
        captions: ``B`` ground-truth captions (one per image) or ``None`` (unsupervised recipes).
        negative_feats: ``[B * k, Dr]`` reward-CLIP embeddings of mined hard-negative images, or ``None``.
        pixels: ``[B, 3, H, W]`` images preprocessed for a pixel-reading reward (an ITM head), or ``None``.
        extra_feats: other per-image embeddings by name, e.g. ``{"phi": [B, Dphi]}`` (VLRM-RS's own CLIP).
    """

    index: Tensor
    prefix_feats: Tensor
    reward_feats: Tensor
    captions: list[str] | None = None
    negative_feats: Tensor | None = None
    pixels: Tensor | None = None
    extra_feats: dict[str, Tensor] = field(default_factory=dict)

    def __len__(self) -> int:
        return int(self.index.shape[0])

    def subset(self, rows: slice) -> Batch:
        """The images ``rows`` of the batch (their captions, pixels, extra features; negatives image-major)."""
        n = len(self)
        idx = torch.arange(n)[rows]
        neg = None
        if self.negative_feats is not None:
            k = self.negative_feats.shape[0] // n
            neg = self.negative_feats.view(n, k, -1)[idx].reshape(len(idx) * k, -1)
        return Batch(self.index[idx], self.prefix_feats[idx], self.reward_feats[idx],
                     None if self.captions is None else [self.captions[i] for i in idx.tolist()], neg,
                     None if self.pixels is None else self.pixels[idx],
                     {k: v[idx] for k, v in self.extra_feats.items()})


@dataclass
class StepResult:
    """Losses with the parameters each one trains, logged statistics and a few sample captions."""

    losses: list[tuple[Tensor, list[nn.Parameter]]]
    stats: dict[str, float] = field(default_factory=dict)
    samples: list[str] = field(default_factory=list)
    weight: float = 1.0     # share of the batch (micro-batches: the loop averages their stats with it)


class Recipe(Protocol):
    """The contract :mod:`tasks.caption_rl.loop` trains."""

    captioner: PrefixCaptioner

    def parameter_groups(self) -> dict[str, list[nn.Parameter]]:
        """Named groups of trainable parameters (``"policy"``, and ``"value"`` for A2C)."""

    def step(self, batch: Batch) -> StepResult:
        """Roll out, score, and return the losses (side updates, e.g. a discriminator, happen here).

        A recipe may also offer ``chunked_steps(batch, micro_batch) -> Iterator[StepResult]`` (gradient
        accumulation over micro-batches, ``optim.micro_batch``)."""

    def state_dict(self) -> dict[str, Any]:
        """Recipe-owned state besides the captioner (value head, discriminator and its optimiser)."""

    def load_state_dict(self, state: dict[str, Any]) -> None: ...


def clip_texts(texts: Sequence[str], strip_periods: bool = False) -> list[str]:
    """Texts as sent to the reward CLIP (periods stripped as in Chaffin et al.'s code, when asked)."""
    return [t.replace(".", "").strip() if strip_periods else t for t in texts]


def encode_reward_texts(reward: CLIPReward, texts: Sequence[str], strip_periods: bool = False) -> Tensor:
    """``[N, D]`` normalised reward-CLIP embeddings of ``texts`` (no grad)."""
    return reward.encode_texts(clip_texts(texts, strip_periods))


def policy_parameters(captioner: PrefixCaptioner, exclude: Sequence[nn.Parameter] = ()) -> list[nn.Parameter]:
    """Every trainable parameter of the captioner (mapper, LM if trained, policy adapters) except ``exclude``."""
    skip = {id(p) for p in exclude}
    return [p for p in captioner.parameters() if p.requires_grad and id(p) not in skip]


def frozen_parameters(*modules: nn.Module) -> list[nn.Parameter]:
    """Parameters with ``requires_grad=False`` (for checks that frozen parts stay frozen)."""
    return [p for m in modules for p in m.parameters() if not p.requires_grad]


def detach_stats(**values: Tensor | float) -> dict[str, float]:
    """Floats for logging (tensors are averaged)."""
    return {k: float(v.detach().float().mean()) if isinstance(v, torch.Tensor) else float(v) for k, v in values.items()}
