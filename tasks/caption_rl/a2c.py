"""VLRM's A2C pieces: value head, value loss (eq. 2), normalised advantages (eq. 3), probability loss (eq. 4).

* The value head reads the LM's last hidden states *detached* from the generation path (or computed with its
  own value-only adapters), so it is trained by the value loss alone and never changes the policy.
* ``A = R - V`` (``V`` detached), normalised over every valid token of the batch:
  ``M = (A - mean A) / (std A + eps)`` (the core's ``compute_advantages(..., "batch", normalize=True)``).
* Policy loss per caption ``-1/n sum_k p_k M_k`` with ``p_k`` the token *probability* (not its log), averaged
  over the batch; the gradient flows through ``p_k`` only.
* Optimiser schedule: linear warm-up from 0 over ``warmup`` steps, then constant (paper: 20 steps to 1e-5).
"""
from __future__ import annotations

import math
from typing import Iterable, Sequence

import torch
from torch import Tensor, nn

from rlcf import compute_advantages

__all__ = ["ValueHead", "value_loss", "normalize_advantages", "probability_policy_loss", "masked_mean_per_row",
           "warmup_constant_schedule", "assign_isolated_grads"]


class ValueHead(nn.Module):
    """Per-token value ``V_k`` from the LM hidden state that predicts token ``t_k``.

    ``LayerNorm(H) -> Linear(H, W) -> GELU -> Linear(W, W) -> GELU -> Linear(W, 1)``. VLRM found a single
    linear layer collapses after a while and used a much larger head; the width ``W`` is a config value.
    """

    def __init__(self, hidden_size: int, width: int = 512) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.LayerNorm(hidden_size), nn.Linear(hidden_size, width), nn.GELU(),
                                 nn.Linear(width, width), nn.GELU(), nn.Linear(width, 1))

    def forward(self, hidden: Tensor) -> Tensor:
        """``[B, N, H]`` -> ``[B, N]`` values (float32)."""
        return self.net(hidden.float()).squeeze(-1)


def masked_mean_per_row(x: Tensor, mask: Tensor) -> Tensor:
    """``[B, N]`` -> ``[B]``: mean over each row's valid entries (0 for an empty row)."""
    m = mask.to(x.dtype)
    return (x * m).sum(-1) / m.sum(-1).clamp(min=1)


def value_loss(values: Tensor, returns: Tensor, mask: Tensor) -> Tensor:
    """Eq. 2 averaged over the batch: ``mean_b 1/n_b sum_k (R_k - V_k)^2``; ``returns`` are constants."""
    return masked_mean_per_row((returns.detach().float() - values.float()) ** 2, mask).mean()


def normalize_advantages(advantages: Tensor, mask: Tensor, eps: float = 1e-5) -> Tensor:
    """Eq. 3: ``(A - mean A) / (std A + eps)`` over every valid token of the batch (``[B, N]``, 0 on padding).

    Uses :func:`rlcf.compute_advantages` (baseline ``"batch"``, ``normalize=True``) on the valid entries.
    """
    m = mask.bool()
    out = torch.zeros_like(advantages, dtype=torch.float32)
    valid = advantages.detach().float()[m]
    if valid.numel() == 0:
        return out
    if valid.numel() == 1:   # the std of one value is undefined: the centred advantage is 0
        return out
    out[m] = compute_advantages(valid.view(1, -1), baseline="batch", normalize=True, eps=eps).view(-1)
    return out


def probability_policy_loss(token_logprobs: Tensor, advantages: Tensor, mask: Tensor) -> Tensor:
    """Eq. 4 averaged over the batch: ``-mean_b 1/n_b sum_k p_k M_k`` with ``p_k = exp(logp_k)`` (with grad)
    and ``M`` constants.

    Args:
        token_logprobs: ``[B, N]`` log-probabilities of the generated tokens (differentiable).
        advantages: ``[B, N]`` normalised advantages ``M``.
        mask: ``[B, N]`` valid tokens.
    """
    p = token_logprobs.float().exp()
    return -masked_mean_per_row(p * advantages.detach().float(), mask).mean()


def warmup_constant_schedule(optimizer: torch.optim.Optimizer, warmup: int) -> torch.optim.lr_scheduler.LambdaLR:
    """LR factor ``(step + 1) / warmup`` for the first ``warmup`` steps, then 1 (VLRM: 20 steps to 1e-5).

    ``(step + 1)``: the first update already uses ``lr / warmup`` rather than 0 (an update at lr 0 is wasted).
    """
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: min(1.0, (s + 1) / warmup) if warmup > 0 else 1.0)


def assign_isolated_grads(pairs: Sequence[tuple[Tensor | None, Iterable[nn.Parameter]]]) -> dict[str, float]:
    """Give each parameter group the gradient of *its own* loss only (``torch.autograd.grad`` per pair).

    Used where a shared trunk could otherwise carry the value loss into the policy (value adapters on a
    trainable LM) or the policy loss into the value head. Gradients are accumulated into ``p.grad``.

    Args:
        pairs: ``(loss, params)``; a ``None`` loss or empty group is skipped.
    Returns:
        ``{"grad_norm/<i>": norm}`` of each group's gradient (before clipping).
    """
    out: dict[str, float] = {}
    todo = [(loss, [p for p in params if p.requires_grad]) for loss, params in pairs]
    live = [(j, loss, ps) for j, (loss, ps) in enumerate(todo) if loss is not None and ps and loss.requires_grad]
    for n, (j, loss, ps) in enumerate(live):
        grads = torch.autograd.grad(loss, ps, allow_unused=True, retain_graph=n < len(live) - 1)
        sq = 0.0
        for p, g in zip(ps, grads):
            if g is None:
                continue
            p.grad = g if p.grad is None else p.grad + g
            sq += float(g.detach().float().pow(2).sum())
        out[f"grad_norm/{j}"] = math.sqrt(sq)
    return out
