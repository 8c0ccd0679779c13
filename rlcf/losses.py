"""Policy-gradient and entropy objectives, and TPT's confident-view selection."""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = ["reinforce_ce", "reinforce_logprob", "marginal_entropy", "select_confident", "entropy"]


def reinforce_ce(logits: Tensor, candidates: Tensor, advantages: Tensor) -> Tensor:
    """REINFORCE written as advantage-weighted cross-entropy (official RLCF).

    ``mean_{b,k} adv[b,k] * CE(logits[b], candidates[b,k])`` = ``-mean(adv * log p(candidate))``.

    Args:
        logits: ``[B, C]`` policy logits (with grad).
        candidates: ``[B, K]`` sampled indices.
        advantages: ``[B, K]`` advantages (treated as constants).
    Returns:
        scalar loss.
    """
    logp = torch.log_softmax(logits.float(), dim=-1).gather(-1, candidates)
    return reinforce_logprob(logp, advantages)


def reinforce_logprob(logprobs: Tensor, advantages: Tensor) -> Tensor:
    """``-mean(adv * logprobs)`` for ``[B, K]`` differentiable log-probabilities of the candidates."""
    if logprobs.shape != advantages.shape:
        raise ValueError(f"logprobs {tuple(logprobs.shape)} and advantages {tuple(advantages.shape)} differ")
    return -(advantages.detach().to(logprobs.dtype) * logprobs).mean()


def entropy(logits: Tensor) -> Tensor:
    """Softmax entropy per row: ``[B, C] -> [B]``."""
    logp = torch.log_softmax(logits.float(), dim=-1)
    return -(logp.exp() * logp).sum(-1)


def marginal_entropy(logits: Tensor) -> Tensor:
    """TPT's loss: entropy of the views' averaged probability, ``[V, C] -> scalar``."""
    logp = torch.log_softmax(logits.float(), dim=-1)
    avg = torch.logsumexp(logp, dim=0) - math.log(logp.shape[0])
    avg = avg.clamp(min=torch.finfo(avg.dtype).min)
    return -(avg * avg.exp()).sum(-1)


def select_confident(logits: Tensor, fraction: float) -> Tensor:
    """Indices of the ``int(V * fraction)`` lowest-entropy views (at least one), most confident first.

    Args:
        logits: ``[V, C]`` logits of all views.
        fraction: TPT's ``selection_p`` in ``(0, 1]``.
    Returns:
        ``[S]`` long indices.
    """
    if not 0.0 < fraction <= 1.0:
        raise ValueError(f"selection fraction must be in (0, 1], got {fraction}")
    n = max(1, int(logits.shape[0] * fraction))
    return torch.argsort(entropy(logits.detach()), descending=False)[:n]


def softmax_ce(logits: Tensor, target_probs: Tensor, temperature: float = 1.0) -> Tensor:
    """Soft cross-entropy ``-sum p_teacher * log_softmax(logits / T)``, mean over rows (KD)."""
    return -(target_probs * F.log_softmax(logits.float() / temperature, dim=-1)).sum(-1).mean()
