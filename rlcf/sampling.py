"""Candidate sampling from a policy's distribution over a discrete candidate set."""
from __future__ import annotations

import torch
from torch import Tensor

__all__ = ["topk_candidates", "sample_candidates", "check_k"]


def check_k(k: int, num_candidates: int) -> None:
    if k < 1:
        raise ValueError(f"k (number of sampled candidates) must be >= 1, got {k}")
    if k > num_candidates:
        raise ValueError(f"k={k} is larger than the number of candidates ({num_candidates}); "
                         f"use k <= {num_candidates}")


def topk_candidates(logits: Tensor, k: int) -> Tensor:
    """Deterministic top-K (official RLCF sampling).

    Args:
        logits: ``[B, C]`` policy logits.
        k: number of candidates per row.
    Returns:
        ``[B, K]`` long indices, highest logit first (``torch.topk`` order; ties by index).
    """
    check_k(k, logits.shape[-1])
    return torch.topk(logits.detach(), k, dim=-1).indices


def sample_candidates(logits: Tensor, k: int, temperature: float = 1.0, replacement: bool = False,
                      generator: torch.Generator | None = None) -> Tensor:
    """Stochastic sampling from ``softmax(logits / temperature)``.

    Args:
        logits: ``[B, C]`` policy logits.
        k: samples per row.
        temperature: softmax temperature (> 0).
        replacement: sample with replacement (plain REINFORCE) or without (distinct candidates).
        generator: optional RNG for reproducibility.
    Returns:
        ``[B, K]`` long indices.
    """
    if not replacement:
        check_k(k, logits.shape[-1])
    if temperature <= 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    probs = torch.softmax(logits.detach().float() / temperature, dim=-1)
    return torch.multinomial(probs, k, replacement=replacement, generator=generator)
