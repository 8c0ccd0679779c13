"""Episodic state: snapshot and exact restore of what test-time adaptation changes.

Only the trainable parameters, the floating-point buffers of the modules that own them
(e.g. BatchNorm running statistics) and the optimizer state are copied: never the whole model.
The optional momentum variant (the official "-M") keeps an EMA of the adapted weights and
moves the reset point towards it every ``update_freq`` samples.
"""
from __future__ import annotations

import copy
import logging
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Iterable, Iterator

import torch
from torch import nn

logger = logging.getLogger(__name__)

__all__ = ["Snapshot", "snapshot", "restore", "trainable_named_parameters", "train_only", "MomentumReset"]


def trainable_named_parameters(model: nn.Module) -> dict[str, nn.Parameter]:
    """What adaptation trains, by qualified name: the policy's own declaration
    (``model.trainable_parameters() -> {name: parameter}``) when it has one, else the parameters with
    ``requires_grad=True``."""
    if hasattr(model, "trainable_parameters"):
        named = dict(model.named_parameters())
        own = dict(model.trainable_parameters())
        unknown = [n for n in own if n not in named or named[n] is not own[n]]
        if unknown:
            raise KeyError(f"trainable_parameters() names {unknown[:3]} that are not parameters of the policy")
        return own
    return {n: p for n, p in model.named_parameters() if p.requires_grad}


@contextmanager
def train_only(model: nn.Module, params: Iterable[nn.Parameter]) -> Iterator[None]:
    """Within the block, exactly ``params`` of ``model`` require grad; every flag is restored after, so
    policies that share a CLIP never see each other's settings."""
    keep = {id(p) for p in params}
    saved = [(p, p.requires_grad) for p in model.parameters()]
    try:
        for p, _ in saved:
            p.requires_grad_(id(p) in keep)
        yield
    finally:
        for p, flag in saved:
            p.requires_grad_(flag)


def _owners_of(model: nn.Module, names: set[str]) -> set[str]:
    return {n.rsplit(".", 1)[0] if "." in n else "" for n in names}


def _mutable_buffers(model: nn.Module, param_names: set[str]) -> dict[str, torch.Tensor]:
    """Buffers of modules that own trainable parameters (e.g. BN running stats)."""
    owners = _owners_of(model, param_names)
    out = {}
    for name, buf in model.named_buffers():
        owner = name.rsplit(".", 1)[0] if "." in name else ""
        if owner in owners and buf is not None:
            out[name] = buf
    return out


@dataclass
class Snapshot:
    """Copies of trainable parameters, their modules' buffers and the optimizer state."""

    params: dict[str, torch.Tensor]
    buffers: dict[str, torch.Tensor]
    optimizer: dict | None = None
    extra: dict = field(default_factory=dict)


def snapshot(model: nn.Module, optimizer: torch.optim.Optimizer | None = None) -> Snapshot:
    """Copy the state that adaptation may change.

    Args:
        model: the policy; :func:`trainable_named_parameters` says what it trains.
        optimizer: optional optimizer whose ``state_dict`` is deep-copied.
    """
    params = {n: p.detach().clone() for n, p in trainable_named_parameters(model).items()}
    buffers = {n: b.detach().clone() for n, b in _mutable_buffers(model, set(params)).items()}
    opt = copy.deepcopy(optimizer.state_dict()) if optimizer is not None else None
    return Snapshot(params, buffers, opt)


@torch.no_grad()
def restore(model: nn.Module, snap: Snapshot, optimizer: torch.optim.Optimizer | None = None) -> None:
    """Write ``snap`` back bit-exactly (in place, so optimizer references stay valid)."""
    named_p = dict(model.named_parameters())
    for n, v in snap.params.items():
        named_p[n].copy_(v)
        named_p[n].grad = None
    named_b = dict(model.named_buffers())
    for n, v in snap.buffers.items():
        named_b[n].copy_(v)
    if optimizer is not None and snap.optimizer is not None:
        optimizer.load_state_dict(copy.deepcopy(snap.optimizer))
        # ``load_state_dict`` keeps tensors it can cast; make sure no stale state survives.
        for p in list(optimizer.state):
            if not optimizer.state[p]:
                del optimizer.state[p]


class MomentumReset:
    """EMA of adapted weights; every ``update_freq`` samples the reset point moves to it.

    After each sample: ``ema = m * ema + (1 - m) * adapted``. Every ``update_freq`` samples:
    ``reset_point = (1 - w) * original + w * ema`` (official ``momentum_update_model``).

    Args:
        snap: the snapshot whose ``params`` are the reset point; updated in place.
        momentum: EMA coefficient ``m`` (official 0.9998).
        update_freq: samples between reset-point updates (official 64).
        update_w: weight ``w`` of the EMA in the new reset point (official 1.0).
    """

    def __init__(self, snap: Snapshot, momentum: float = 0.9998, update_freq: int = 64,
                 update_w: float = 1.0) -> None:
        if not 0.0 <= momentum <= 1.0:
            raise ValueError(f"momentum must be in [0, 1], got {momentum}")
        if update_freq < 1:
            raise ValueError(f"update_freq must be >= 1, got {update_freq}")
        self.snap = snap
        self.momentum, self.update_freq, self.update_w = momentum, update_freq, update_w
        self.original = {n: v.clone() for n, v in snap.params.items()}
        self.ema = {n: v.clone() for n, v in snap.params.items()}
        self.count = 0

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        """Fold the adapted weights of ``model`` into the EMA (call before restoring)."""
        named = dict(model.named_parameters())
        m = self.momentum
        for n, e in self.ema.items():
            e.mul_(m).add_(named[n].detach(), alpha=1.0 - m)
        self.count += 1
        if self.count % self.update_freq == 0:
            w = self.update_w
            for n, v in self.snap.params.items():
                v.copy_(self.original[n] * (1.0 - w) + self.ema[n] * w)
            logger.debug("momentum reset point updated after %d samples", self.count)

    @torch.no_grad()
    def reset(self) -> None:
        """Start a new stream: the EMA and the reset point go back to the original weights."""
        for n, v in self.original.items():
            self.ema[n].copy_(v)
            self.snap.params[n].copy_(v)
        self.count = 0

    def state_dict(self) -> dict:
        return {"ema": {n: v.clone() for n, v in self.ema.items()},
                "reset_point": {n: v.clone() for n, v in self.snap.params.items()}, "count": self.count}

    @torch.no_grad()
    def load_state_dict(self, state: dict) -> None:
        """Restore :meth:`state_dict` (EMA, reset point, sample count)."""
        for n, v in state["ema"].items():
            self.ema[n].copy_(v)
        for n, v in state["reset_point"].items():
            self.snap.params[n].copy_(v)
        self.count = int(state["count"])
