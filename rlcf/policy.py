"""Policy contracts and the per-sample episode cache.

A *discrete* policy scores a fixed candidate set (classes, gallery items) for a batch of
queries (the views of one test image, or one caption)::

    q = policy.encode_query(x)       # [B, D] query features
    logits = policy.logits(q)        # [B, C] scores over the C candidates

``policy.query_trainable`` says whether ``encode_query`` depends on trainable parameters
(encoder tuning: yes; prompt tuning: no, so the query features are computed once per sample).
"""
from __future__ import annotations

from typing import Protocol, runtime_checkable

import torch
from torch import Tensor, nn

from .losses import select_confident

__all__ = ["DiscretePolicy", "GenerativePolicy", "Episode", "is_generative"]


@runtime_checkable
class DiscretePolicy(Protocol):
    query_trainable: bool

    def encode_query(self, x: Tensor) -> Tensor: ...

    def logits(self, q: Tensor) -> Tensor: ...

    def parameters(self, recurse: bool = True): ...


@runtime_checkable
class GenerativePolicy(Protocol):
    """A policy whose candidates are generated sequences (captions).

    ``encode_query`` maps the sample (e.g. the image ``[1, 3, H, W]``) to the frozen conditioning
    (e.g. the CLIP prefix embedding ``[1, D]``), computed once per sample.
    """

    def encode_query(self, x: Tensor) -> Tensor: ...

    def generate(self, q: Tensor, k: int) -> list[list[str]]:
        """``B`` lists of ``k`` candidate texts (no grad; beam search or sampling)."""

    def sequence_logprob(self, q: Tensor, texts: list[list[str]]) -> Tensor:
        """``[B, K]`` differentiable log-probability score of each candidate (e.g. mean token log-prob)."""

    def predict(self, q: Tensor) -> list[str]:
        """Final output per query row (e.g. 5-beam caption)."""


def is_generative(policy: object) -> bool:
    return isinstance(policy, GenerativePolicy)


class Episode:
    """Everything cached for one test sample (one episode).

    Args:
        policy: the discrete policy.
        views: ``[V, ...]`` inputs of the sample; view 0 is the clean one used for prediction.
        selection: fraction of most confident views kept (chosen once, at the first step).
    """

    def __init__(self, policy: nn.Module, views: Tensor, selection: float = 1.0) -> None:
        self.policy = policy
        self.views = views
        self.selection = selection
        self.selected: Tensor | None = None
        self._query: Tensor | None = None  # cached query features when the query side is frozen
        self.cache: dict = {}  # method-specific per-sample state (reward query set, diagnostics)

    @property
    def frozen_query(self) -> Tensor:
        if self._query is None:
            with torch.no_grad():
                self._query = self.policy.encode_query(self.views).detach()
        return self._query

    def selected_logits(self) -> Tensor:
        """Logits ``[S, C]`` (with grad) of the confident views; selects them on the first call.

        Frozen query: all-view logits are computed once with grad and sliced (one text pass).
        Trainable query: views are ranked by a no-grad forward, then only the ``S`` selected
        views are forwarded with grad (identical values for models without batch statistics).
        """
        p = self.policy
        if self.selected is None:
            if p.query_trainable and self.selection >= 1.0:   # nothing to rank: every view is kept
                self.selected = torch.arange(self.views.shape[0], device=self.views.device)
                return p.logits(p.encode_query(self.views))
            if p.query_trainable:
                with torch.no_grad():
                    all_logits = p.logits(p.encode_query(self.views))
                self.selected = self._select(all_logits)
                return p.logits(p.encode_query(self.views[self.selected]))
            all_logits = p.logits(self.frozen_query)
            self.selected = self._select(all_logits)
            return all_logits[self.selected]
        if p.query_trainable:
            return p.logits(p.encode_query(self.views[self.selected]))
        return p.logits(self.frozen_query[self.selected])

    def _select(self, logits: Tensor) -> Tensor:
        if self.selection >= 1.0:
            return torch.arange(logits.shape[0], device=logits.device)
        return select_confident(logits, self.selection)

    def all_logits(self) -> Tensor:
        """Logits ``[V, C]`` of every view (with grad when the policy has trainable parts)."""
        p = self.policy
        return p.logits(p.encode_query(self.views) if p.query_trainable else self.frozen_query)

    @torch.no_grad()
    def predict(self) -> Tensor | str:
        """Fresh no-grad forward of the clean view 0: logits ``[C]`` (or the generated text)."""
        p = self.policy
        if is_generative(p):
            return p.predict(self.frozen_query[:1])[0]
        q = p.encode_query(self.views[:1]) if p.query_trainable else self.frozen_query[:1]
        return p.logits(q)[0].float()
