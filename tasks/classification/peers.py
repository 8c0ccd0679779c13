"""Peer methods in the core registry: C-TPT, ZERO, TDA and KD from the reward model.

Importing this module registers ``ctpt``, ``zero``, ``tda`` and ``kd`` (``tasks.classification``
imports it). Each states whether it is episodic (reset per sample) or online (state carried
across the test stream, so the stream order matters and sharding is refused).
"""
from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

import rlcf
from rlcf.engine import AdaptConfig, Method
from rlcf.losses import entropy, marginal_entropy, select_confident, softmax_ce
from rlcf.policy import Episode

__all__ = ["CTPT", "Zero", "TDA", "KD", "text_dispersion", "zero_vote", "TDACache"]


def text_dispersion(text_feats: Tensor) -> Tensor:
    """C-TPT's ATFD: mean L2 distance of normalised class features ``[C, D]`` to their centroid."""
    return (text_feats - text_feats.mean(0, keepdim=True)).norm(dim=-1).mean()


@rlcf.register_method("ctpt")
class CTPT(Method):
    """C-TPT (Yoon et al., ICLR'24): TPT's marginal entropy minus ``lambda * ATFD`` of the prompt's
    class text features (``extra.ctpt_lambda``: 20 for ImageNet variants, 50 for fine-grained sets).
    Episodic; needs a prompt policy (``class_features()`` with grad)."""

    default_config = AdaptConfig(steps=1, lr=5e-3, selection=0.1, extra={"ctpt_lambda": 20.0})

    @classmethod
    def supports(cls, policy) -> bool:
        return not getattr(policy, "query_trainable", True)   # the text side (prompt) must be trainable

    def loss(self, ep: Episode, step: int) -> Tensor:
        p = self.policy
        feats = p.class_features()
        if ep.selected is None:
            all_logits = p.logits(ep.frozen_query, feats)
            ep.selected = select_confident(all_logits, self.config.selection)
            logits = all_logits[ep.selected]
        else:
            logits = p.logits(ep.frozen_query[ep.selected], feats)
        lam = float(self.config.extra.get("ctpt_lambda", 20.0))
        return marginal_entropy(logits) - lam * text_dispersion(feats)


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


@rlcf.register_method("zero")
class Zero(Method):
    """ZERO: no backward pass, argmax voting over the confident views (episodic, training-free).
    Returns ``log(vote fraction)`` so that softmax gives the vote shares. ``extra``: ``tie_break``
    (``"entropy"``, official HEAD; ``"view_order"``, before cbd7949) and ``official_fallback``
    (see :func:`zero_vote`)."""

    default_config = AdaptConfig(steps=0, selection=0.3, extra={"tie_break": "entropy", "official_fallback": True})

    def forward(self, views: Tensor) -> Tensor:
        views = self.check_views(views)
        with torch.no_grad(), self._autocast():
            ep = self.make_episode(views)
            e = {**self.default_config.extra, **self.config.extra}
            votes = zero_vote(ep.all_logits().float(), self.config.selection, e["tie_break"], e["official_fallback"])
        self.last_info = {"flags": [], "losses": [], "votes": votes.tolist(), "precision": self.precision}
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


@rlcf.register_method("tda")
class TDA(Method):
    """TDA (Karmanov et al., CVPR'24): training-free positive/negative feature caches. **Online**.

    Multi-view samples keep the 10% most confident views (features and logits averaged, as the
    official ``get_clip_logits``); single-view samples use the view itself. ``extra`` holds the
    official hyperparameters (ImageNet defaults; per-dataset values in configs).
    """

    episodic = False
    default_config = AdaptConfig(steps=0, selection=0.1, extra={
        "pos_capacity": 3, "pos_alpha": 2.0, "pos_beta": 5.0,
        "neg_capacity": 2, "neg_alpha": 0.117, "neg_beta": 1.0,
        "neg_entropy": [0.2, 0.5], "neg_mask": [0.03, 1.0]})

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.reset_state()

    def reset_state(self) -> None:
        """Empty both caches (start of a new stream)."""
        e = {**self.default_config.extra, **self.config.extra}
        self.pos, self.neg = TDACache(e["pos_capacity"]), TDACache(e["neg_capacity"])

    def forward(self, views: Tensor) -> Tensor:
        e = {**self.default_config.extra, **self.config.extra}
        views = self.check_views(views)
        p = self.policy
        with torch.no_grad(), self._autocast():
            q = p.encode_query(views).float()
            logits = p.logits(q).float()
            c = logits.shape[-1]
            if views.shape[0] > 1:
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
            lo, hi = e["neg_entropy"]
            if lo < prop_entropy < hi:
                self.neg.update(pred, feat, loss, prob)
            final = clip_logits.clone()
            if self.pos.items:
                final += self.pos.logits(feat, e["pos_alpha"], e["pos_beta"], c)
            if self.neg.items:
                final -= self.neg.logits(feat, e["neg_alpha"], e["neg_beta"], c, tuple(e["neg_mask"]))
        self.last_info = {"flags": [], "losses": [], "pos_size": sum(len(v) for v in self.pos.items.values()),
                          "precision": self.precision}
        return final


@rlcf.register_method("kd")
class KD(Method):
    """Knowledge distillation from the reward CLIP (official RLCF KD baseline): the teacher's
    logits ``logit_scale * cos`` over the confident views; soft cross-entropy at temperature T
    (``extra.kd_temperature``, 1). Episodic. The reward object provides the teacher."""

    needs_reward = True
    default_config = AdaptConfig(steps=3, lr=1e-5, selection=0.1, extra={"kd_temperature": 1.0})

    def loss(self, ep: Episode, step: int) -> Tensor:
        logits = ep.selected_logits()
        if "_teacher" not in ep.cache:
            self.reward.set_query(ep.views[ep.selected])
            ep.cache["_teacher"] = self.reward.teacher_logits()
        t = float(self.config.extra.get("kd_temperature", 1.0))
        target = (ep.cache["_teacher"].to(logits.device) / t).softmax(-1)
        return softmax_ce(logits, target, t)
