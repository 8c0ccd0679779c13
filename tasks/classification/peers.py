"""Peer methods: C-TPT, ZERO, TDA and KD from the reward model.

They are registered in the core registry explicitly, by :func:`tasks.methods.register_all` (the one
list of every method), never as a side effect of an import. Each states whether it is episodic (reset
per sample) or online (state carried across the test stream, so the stream order matters and sharding
is refused). Their options are typed dataclasses (``adapt.options`` in a config).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from rlcf.config import AdaptConfig
from rlcf.engine import Method
from rlcf.losses import entropy, marginal_entropy, select_confident, softmax_ce
from rlcf.policy import DiscretePolicy, Episode

__all__ = ["CTPT", "Zero", "TDA", "KD", "PEERS", "text_dispersion", "zero_vote", "TDACache", "CTPTOptions",
           "ZeroOptions", "TDAOptions", "KDOptions"]


def text_dispersion(text_feats: Tensor) -> Tensor:
    """C-TPT's ATFD: mean L2 distance of normalised class features ``[C, D]`` to their centroid."""
    return (text_feats - text_feats.mean(0, keepdim=True)).norm(dim=-1).mean()


@dataclass(frozen=True)
class CTPTOptions:
    """``ctpt_lambda``: the ATFD weight (20 for ImageNet variants, 50 for fine-grained sets)."""

    ctpt_lambda: float = 20.0


class CTPT(Method):
    """C-TPT (Yoon et al., ICLR'24): TPT's marginal entropy minus ``lambda * ATFD`` of the prompt's
    class text features (``options.ctpt_lambda``). Episodic; needs a prompt policy (``class_features()``
    with grad)."""

    name = "ctpt"
    Options = CTPTOptions
    batchable = False   # its loss needs the prompt's class features too: a batch runs sample by sample
    default_config = AdaptConfig(steps=1, lr=5e-3, selection=0.1)

    @classmethod
    def supports(cls, policy) -> bool:   # the text side (prompt) must be trainable
        return isinstance(policy, DiscretePolicy) and not policy.query_trainable and hasattr(policy, "class_features")

    def loss(self, ep: Episode, step: int) -> Tensor:
        feats = self.policy.class_features()
        logits = self.policy.selected_logits(ep, class_feats=feats)
        return marginal_entropy(logits) - self.options.ctpt_lambda * text_dispersion(feats)


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


class Zero(Method):
    """ZERO: no backward pass, argmax voting over the confident views (episodic, training-free).
    Returns ``log(vote fraction)`` so that softmax gives the vote shares."""

    name = "zero"
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


class TDACache:
    """TDA's positive or negative cache: up to ``capacity`` (feature, entropy[, prob map]) per class,
    lowest entropy kept (official ``update_cache``)."""

    def __init__(self, capacity: int) -> None:
        self.capacity, self.items = capacity, {}

    def update(self, pred: int, feat: Tensor, loss: float, extra: Tensor | None = None) -> None:
        item = (feat, loss, extra)
        entries = self.items.setdefault(pred, [])
        if not entries:
            entries.append(item)
        elif len(entries) < self.capacity:
            entries.append(item)
        elif loss < entries[-1][1]:
            entries[-1] = item
        entries.sort(key=lambda x: x[1])

    def logits(self, feat: Tensor, alpha: float, beta: float, num_classes: int,
               mask: tuple[float, float] | None = None) -> Tensor:
        keys, values = [], []
        for c in sorted(self.items):
            for f, _, prob in self.items[c]:
                keys.append(f)
                if mask is None:
                    values.append(F.one_hot(torch.tensor(c), num_classes).float())
                else:
                    values.append(((prob > mask[0]) & (prob < mask[1])).float())
        k, v = torch.stack(keys), torch.stack(values).to(feat.device)
        affinity = feat @ k.t()
        return alpha * ((-1.0) * (beta - beta * affinity)).exp() @ v


@dataclass(frozen=True)
class TDAOptions:
    """TDA's cache settings (ImageNet defaults; per-dataset alpha / beta in ``configs/classification/tda.yaml``)."""

    pos_capacity: int = 3
    pos_alpha: float = 2.0
    pos_beta: float = 5.0
    neg_capacity: int = 2
    neg_alpha: float = 0.117
    neg_beta: float = 1.0
    neg_entropy: tuple[float, float] = (0.2, 0.5)
    neg_mask: tuple[float, float] = (0.03, 1.0)


class TDA(Method):
    """TDA (Karmanov et al., CVPR'24): training-free positive/negative feature caches. **Online**:
    the caches are its stream state (:meth:`reset_stream`, :meth:`stream_state`).

    Multi-view samples keep the 10% most confident views (features and logits averaged, as the
    official ``get_clip_logits``); single-view samples use the view itself.
    """

    name = "tda"
    episodic = False
    Options = TDAOptions
    default_config = AdaptConfig(steps=0, selection=0.1)

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.reset_stream()

    @classmethod
    def supports(cls, policy) -> bool:
        return isinstance(policy, DiscretePolicy)

    def reset_stream(self) -> None:
        """Empty both caches (start of a new stream)."""
        super().reset_stream()
        self.pos, self.neg = TDACache(self.options.pos_capacity), TDACache(self.options.neg_capacity)

    def stream_state(self) -> dict[str, Any]:
        return {**super().stream_state(), "pos": dict(self.pos.items), "neg": dict(self.neg.items)}

    def load_stream_state(self, state: dict[str, Any]) -> None:
        super().load_stream_state(state)
        self.pos.items = {int(k): list(v) for k, v in state["pos"].items()}
        self.neg.items = {int(k): list(v) for k, v in state["neg"].items()}

    def predict(self, ep: Episode) -> Tensor:
        o, p, views = self.options, self.policy, ep.inputs
        q = p.encode_query(views).float()
        logits = p.logits(q).float()
        c = logits.shape[-1]
        if len(views) > 1:
            sel = select_confident(logits, self.config.selection)
            feat, out = q[sel].mean(0), logits[sel]
            clip_logits, loss = out.mean(0), float(marginal_entropy(out))
            prob = out.softmax(-1).mean(0)
        else:
            feat, clip_logits = q[0], logits[0]
            loss, prob = float(entropy(logits)[0]), logits[0].softmax(-1)
        pred = int(clip_logits.argmax())
        prop_entropy = loss / math.log2(c)   # official normalisation (natural-log entropy / log2 C)
        self.pos.update(pred, feat, loss)
        lo, hi = o.neg_entropy
        if lo < prop_entropy < hi:
            self.neg.update(pred, feat, loss, prob)
        final = clip_logits.clone()
        if self.pos.items:
            final += self.pos.logits(feat, o.pos_alpha, o.pos_beta, c)
        if self.neg.items:
            final -= self.neg.logits(feat, o.neg_alpha, o.neg_beta, c, tuple(o.neg_mask))
        ep.info["pos_size"] = sum(len(v) for v in self.pos.items.values())
        return final


@dataclass(frozen=True)
class KDOptions:
    """``kd_temperature``: the distillation temperature T (official 1)."""

    kd_temperature: float = 1.0


class KD(Method):
    """Knowledge distillation from the reward CLIP (official RLCF KD baseline): the teacher's
    logits ``logit_scale * cos`` over the confident views; soft cross-entropy at temperature T
    (``options.kd_temperature``). Episodic. The reward object provides the teacher."""

    name = "kd"
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


PEERS: tuple[type[Method], ...] = (CTPT, Zero, TDA, KD)
