"""ZERO (Farina et al., NeurIPS'24): argmax voting over the confident views, no backward pass."""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from rlcf import AdaptConfig, DiscretePolicy, Episode, Method, register_method
from rlcf.losses import entropy

__all__ = ["ZeroVote", "ZeroOptions", "zero_vote", "TIE_BREAKS"]


TIE_BREAKS = ("entropy", "view_order")


def zero_vote(logits: Tensor, gamma: float, tie_break: str = "entropy", official_fallback: bool = True) -> Tensor:
    """ZERO (Farina et al., NeurIPS'24): one-hot votes of the ``int(V * gamma)`` most confident views.

    A tie between classes gets one extra vote, given by ``greedy_break``: the first of the remaining
    views whose argmax is a tied class. ``tie_break="entropy"`` (official since FarinaMatteo/zero
    cbd7949, the default): the ``V - k`` *non-selected* views in entropy order (most confident first);
    ``"view_order"`` (the code before that commit): views ``k..V-1`` in their original order.
    When no remaining view's argmax is tied, the official fallback (``break_sample_tie`` on the first
    remaining row) masks ``logit[~ties] = -inf`` with a *bitwise* NOT of the tie indices, i.e. it hides
    the classes ``-(t + 1)`` (counted from the end) rather than the non-tied ones, and takes the argmax,
    which may be a class outside the tie; ``official_fallback=False`` takes the tied class with the
    highest logit there instead.

    Args:
        logits: ``[V, C]`` logits of all views.
        gamma: kept fraction (official 0.3).
        tie_break: ``"entropy"`` or ``"view_order"``.
        official_fallback: reproduce the official fallback described above.
    Returns:
        ``[C]`` vote counts (float).
    """
    if tie_break not in TIE_BREAKS:
        raise ValueError(f"tie_break must be one of {TIE_BREAKS}, got '{tie_break}'")
    v = logits.shape[0]
    order = torch.argsort(entropy(logits.detach()), descending=False)
    k = max(1, int(v * gamma))
    votes = torch.bincount(logits[order[:k]].argmax(-1), minlength=logits.shape[-1]).float()
    ties = (votes == votes.max()).nonzero().flatten()
    if len(ties) > 1:
        rest = logits[order[k:]] if tie_break == "entropy" else logits[k:]
        if rest.shape[0] == 0:
            rest = logits[order[-1:]]
        tied = set(ties.tolist())
        winner = next((int(a) for a in rest.argmax(-1) if int(a) in tied), None)
        if winner is None:
            row = rest[0].clone()
            if official_fallback:
                row[~ties] = float("-inf")    # bitwise NOT of the indices, as the official code
                winner = int(row.argmax())
            else:
                winner = int(ties[row[ties].argmax()])
        votes[winner] += 1
    return votes


@dataclass(frozen=True)
class ZeroOptions:
    """``tie_break``: ``"entropy"`` (official HEAD) or ``"view_order"`` (before cbd7949);
    ``official_fallback``: reproduce the bitwise-NOT fallback (see :func:`zero_vote`)."""

    tie_break: str = "entropy"
    official_fallback: bool = True

    def __post_init__(self) -> None:
        if self.tie_break not in TIE_BREAKS:
            raise ValueError(f"tie_break must be one of {TIE_BREAKS}, got '{self.tie_break}'")


@register_method("zero_vote", aliases=("zero",))
class ZeroVote(Method):
    """ZERO: no backward pass, argmax voting over the confident views (episodic, training-free).
    Returns ``log(vote fraction)`` so that softmax gives the vote shares."""

    Options = ZeroOptions
    default_config = AdaptConfig(steps=0, selection=0.3)

    @classmethod
    def supports(cls, policy) -> bool:
        return isinstance(policy, DiscretePolicy)

    def predict(self, ep: Episode) -> Tensor:
        o = self.options
        votes = zero_vote(self.policy.all_logits(ep).float(), self.config.selection, o.tie_break, o.official_fallback)
        ep.info["votes"] = votes.tolist()
        return torch.log(votes / votes.sum() + 1e-12)
