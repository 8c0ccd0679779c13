"""DPE (Zhang et al., NeurIPS'24): dual prototype evolving, textual and visual residuals; online."""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from rlcf import AdaptConfig, DiscretePolicy, Episode, Method, register_method
from rlcf.losses import entropy, marginal_entropy, select_confident

from .tda import TDACache

__all__ = ["DPE", "DPEOptions", "dpe_cache_logits", "info_nce"]


def dpe_cache_logits(feat: Tensor, keys: Tensor, classes: list[int], alpha: float, beta: float,
                     num_classes: int) -> Tensor:
    """DPE's cache logits (official ``compute_cache_logits`` over class prototypes): ``alpha * exp(-beta * (1 -
    feat @ keys^T)) @ onehot(classes)``; ``keys`` ``[K, D]`` one (residual-shifted, normalised) visual prototype per
    cached class. Returns ``[C]``."""
    values = F.one_hot(torch.tensor(classes, device=feat.device), num_classes).to(feat.dtype)
    return alpha * torch.exp(-beta * (1 - feat @ keys.t())) @ values


def info_nce(query: Tensor, positive: Tensor, temperature: float) -> Tensor:
    """InfoNCE with the other rows as negatives (the ``info_nce`` package, ``negative_keys=None``):
    ``CE(normalize(query) @ normalize(positive)^T / temperature, arange(K))``."""
    logits = F.normalize(query, dim=-1) @ F.normalize(positive, dim=-1).t()
    return F.cross_entropy(logits / temperature, torch.arange(len(query), device=query.device))


@dataclass(frozen=True)
class DPEOptions:
    """DPE's settings (official ``configs/imagenet.yaml``; per dataset in ``configs/classification/dpe.yaml``).

    ``pos_capacity`` / ``pos_alpha`` / ``pos_beta``: the positive cache; ``align_weight``: the weight of the
    alignment loss (InfoNCE at ``align_temperature`` 0.01 between the visual and the textual prototypes of the
    cached classes); ``update_steps``: AdamW steps per sample (official 1); ``image_lr``: the visual residual's lr
    (``None``: ``adapt.lr``, as every official config); ``evolve_entropy``: the global textual prototypes take a
    sample's adapted ones when its normalised entropy is below it (official 0.1); ``predict_all_views``: predict
    from the confident views' averages instead of view 0 (the official branch for ImageNet-A only).
    """

    pos_capacity: int = 3
    pos_alpha: float = 6.0
    pos_beta: float = 5.0
    align_weight: float = 0.5
    align_temperature: float = 0.01
    update_steps: int = 1
    image_lr: float | None = None
    evolve_entropy: float = 0.1
    predict_all_views: bool = False


@register_method("dpe")
class DPE(Method):
    """DPE (Zhang et al., NeurIPS'24): per sample, zero-initialised residuals on the textual prototypes (every
    class) and on the visual prototypes (the means of a TDA-style positive cache), one AdamW step of the entropy of
    ``clip logits + cache logits`` plus the InfoNCE alignment of the two prototype sets, then the prediction; the
    global textual prototypes evolve by cumulative averaging over confident samples. Online (the cache and the
    global prototypes are its stream state). The residuals are the sample's own, created afresh (official
    ``TextResidue`` / ``PositiveCacheResidue``), so DPE runs its own step inside its prediction: ``adapt.lr``,
    ``adapt.eps``, ``adapt.weight_decay`` set it and the engine adapts nothing (``adapt.steps`` 0)."""

    episodic = False
    Options = DPEOptions
    default_config = AdaptConfig(steps=0, lr=6e-4, weight_decay=0.1, eps=1e-3, selection=0.1)

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        if self.config.steps != 0:
            raise ValueError("dpe updates its own per-sample residuals (adapt.options.update_steps); adapt.steps must "
                             "be 0")
        self.reset_stream()

    @classmethod
    def supports(cls, policy) -> bool:   # it reads and re-weights the class text features
        return isinstance(policy, DiscretePolicy) and hasattr(policy, "class_features")

    def reset_stream(self) -> None:
        """Empty the cache and forget the evolved prototypes (start of a new stream)."""
        super().reset_stream()
        self.pos = TDACache(self.options.pos_capacity)
        self.global_text: Tensor | None = None
        self.num_avg = 0

    def stream_state(self) -> dict[str, Any]:
        return {**super().stream_state(), "pos": dict(self.pos.items), "num_avg": self.num_avg,
                "global_text": None if self.global_text is None else self.global_text.clone()}

    def load_stream_state(self, state: dict[str, Any]) -> None:
        super().load_stream_state(state)
        self.pos.items = {int(k): list(v) for k, v in state["pos"].items()}
        self.num_avg = int(state["num_avg"])
        self.global_text = None if state["global_text"] is None else state["global_text"].clone()

    def _confident(self, q: Tensor, logits: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """``(feature, logits, entropy)`` of a sample: the confident views' averages and their marginal entropy
        (several views), else view 0's (official ``get_clip_logits``)."""
        if len(q) > 1:
            sel = select_confident(logits, self.config.selection)
            return q[sel].mean(0), logits[sel].mean(0), marginal_entropy(logits[sel])
        return q[0], logits[0], entropy(logits[:1])[0]

    def predict(self, ep: Episode) -> Tensor:
        p, o, c = self.policy, self.options, self.config
        q = (p.encode_query(ep.inputs) if p.query_trainable else p.frozen_query(ep)).float()
        if self.global_text is None:
            self.global_text = p.class_features().detach().float().clone()
        glob = self.global_text
        n_cls = len(glob)
        with torch.enable_grad():
            text_res = torch.zeros_like(glob, requires_grad=True)
            feat, clip_logits, loss0 = self._confident(q, p.logits(q, class_feats=F.normalize(glob + text_res, dim=-1)))
            pred = int(clip_logits.argmax())
            self.pos.update(pred, feat.detach(), float(loss0.detach()) / math.log2(n_cls))
            classes = sorted(self.pos.items)
            protos = torch.stack([torch.stack([f for f, _, _ in self.pos.items[k]]).mean(0) for k in classes])
            cache_res = torch.zeros_like(protos, requires_grad=True)
            opt = torch.optim.AdamW([{"params": [text_res], "lr": c.lr},
                                     {"params": [cache_res], "lr": c.lr if o.image_lr is None else o.image_lr}],
                                    eps=c.eps, weight_decay=c.weight_decay)
            for step in range(o.update_steps):   # official: the first forward's clip logits at every step
                text = F.normalize(glob + text_res, dim=-1)
                keys = F.normalize(protos + cache_res, dim=-1)
                final = clip_logits + dpe_cache_logits(feat, keys, classes, o.pos_alpha, o.pos_beta, n_cls)
                loss = entropy(final[None])[0] + o.align_weight * info_nce(keys, text[classes], o.align_temperature)
                opt.zero_grad()
                loss.backward(retain_graph=step < o.update_steps - 1)
                opt.step()
                ep.log("losses", float(loss.detach()))
        text = F.normalize(glob + text_res.detach(), dim=-1)
        keys = F.normalize(protos + cache_res.detach(), dim=-1)
        if o.predict_all_views:
            feat, clip_logits, _ = self._confident(q, p.logits(q, class_feats=text).float())
        else:
            feat, clip_logits = q[0], p.logits(q[:1], class_feats=text)[0].float()
        final = clip_logits + dpe_cache_logits(feat, keys, classes, o.pos_alpha, o.pos_beta, n_cls)
        if float(entropy(final[None])[0]) / math.log2(n_cls) < o.evolve_entropy:   # textual prototype evolution
            self.num_avg += 1
            self.global_text = glob * (self.num_avg / (self.num_avg + 1)) + text / (self.num_avg + 1)
            ep.info["evolved"] = True
        ep.info["pos_size"] = sum(len(v) for v in self.pos.items.values())
        return final
