"""Baselines and advantages: named options, TRL-style.

All functions take rewards of shape ``[B, K]`` (B queries or views, K sampled candidates).
"""
from __future__ import annotations

from typing import Callable

import torch
from torch import Tensor

__all__ = ["compute_advantages", "BASELINES", "list_baselines"]


def _mean(r: Tensor) -> Tensor:
    return r.mean(dim=-1, keepdim=True).expand_as(r)


def _loo(r: Tensor) -> Tensor:
    k = r.shape[-1]
    return (r.sum(dim=-1, keepdim=True) - r) / (k - 1)


def _batch(r: Tensor) -> Tensor:
    return r.mean().expand_as(r)


def _none(r: Tensor) -> Tensor:
    return torch.zeros_like(r)


BASELINES: dict[str, Callable[[Tensor], Tensor]] = {
    "mean": _mean,    # mean over the K candidates of the same query (official RLCF)
    "loo": _loo,      # leave-one-out mean over the other K-1 candidates
    "batch": _batch,  # mean over every reward in the batch
    "none": _none,    # plain REINFORCE
}


def list_baselines() -> list[str]:
    return sorted(BASELINES)


def compute_advantages(rewards: Tensor, baseline: str = "mean", normalize: bool = False,
                       eps: float = 1e-5) -> Tensor:
    """``rewards - baseline(rewards)``, optionally divided by the std of the rewards.

    As in the official ``rewards_post_process``, a per-query baseline (``mean``/``loo``) is skipped
    when ``K == 1``: the raw reward is used (a mean over one candidate would cancel it).

    Args:
        rewards: ``[B, K]`` rewards (no grad).
        baseline: one of :func:`list_baselines` (``"mean"`` is the official choice).
        normalize: divide by the unbiased std over K plus ``eps`` (official ``reward_amplify=1``;
            over all rewards for ``"batch"``).
        eps: added to the std (official 1e-5).
    Returns:
        ``[B, K]`` advantages, detached, float32.
    """
    if rewards.dim() != 2:
        raise ValueError(f"rewards must be [B, K], got shape {tuple(rewards.shape)}")
    if baseline not in BASELINES:
        raise KeyError(f"unknown baseline '{baseline}'; choose from {list_baselines()}")
    r = rewards.detach().float()
    if baseline in ("mean", "loo") and r.shape[-1] == 1:
        return r
    adv = r - BASELINES[baseline](r)
    if normalize and baseline != "none":
        std = r.std() if baseline == "batch" else r.std(dim=-1, keepdim=True)
        adv = adv / (std + eps)
    return adv
