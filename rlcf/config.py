"""Adaptation settings: :class:`AdaptConfig` (shared by every method), precisions, a method's own options."""
from __future__ import annotations

import dataclasses
from dataclasses import asdict, dataclass, field, fields, replace
from typing import Any

import torch

__all__ = ["AdaptConfig", "AMP_MODES", "resolve_precision", "NoOptions", "build_options", "Flags"]

AMP_MODES = ("auto", None, "fp32", "bf16", "fp16")


def resolve_precision(amp: str | None, device: torch.device | str) -> str:
    """What ``AdaptConfig.amp`` means on ``device``: ``"fp16"``, ``"bf16"`` or ``"fp32"``.

    ``"auto"`` is the official choice: fp16 autocast (with a GradScaler) on CUDA, fp32 elsewhere.
    """
    if amp not in AMP_MODES:
        raise ValueError(f"amp must be one of {AMP_MODES}, got '{amp}'")
    if amp == "auto":
        return "fp16" if torch.device(device).type == "cuda" else "fp32"
    return "fp32" if amp is None else amp


@dataclass
class AdaptConfig:
    """Hyperparameters shared by every adaptation method (defaults: official RLCF prompt tuning).

    Attributes:
        steps: optimisation steps per sample (0 = no adaptation).
        lr, weight_decay, eps: optimizer settings.
        optimizer: ``"adamw"`` (official), ``"adam"`` or ``"sgd"``.
        k: candidates sampled per query/view.
        sampling: ``"topk"`` (official, deterministic) or ``"sample"`` (from the policy's softmax).
        temperature: softmax temperature for ``sampling="sample"``.
        baseline: ``"mean"`` (official), ``"loo"``, ``"batch"`` or ``"none"``.
        normalize_advantages: divide advantages by the reward std (official ``reward_amplify``).
        selection: fraction of lowest-entropy views kept (TPT/RLCF 0.1; 1.0 keeps all).
        amp: ``"auto"`` (default, as the official loops: fp16 autocast + GradScaler on CUDA, fp32
            elsewhere), ``"fp16"`` (autocast fp16 + GradScaler on any device, CPU included, so tests
            run the CUDA code path), ``"bf16"`` (autocast bf16, no scaler) or ``None`` / ``"fp32"``.
            The weights stay fp32 (official: ``convert_weights`` is disabled); :attr:`Method.precision`
            says what runs and every task records it.
        grad_scaler_init: initial scale of the fp16 GradScaler (official 1000). One scaler serves the
            whole run (official: created once, never reset per sample), so its scale carries over.
        momentum: EMA coefficient of the "-M" variant (``None`` = off; official 0.9998).
        update_freq, update_w: "-M" reset-point refresh period and EMA weight (64, 1.0).
        train_mode: put the policy in ``train()`` mode during the steps (official encoder tuning;
            policies keep their frozen parts in eval), else ``eval()``. Prediction always runs in
            ``eval()`` mode; every module's mode is restored afterwards.
        options: the method's own options, checked against its :attr:`Method.Options` dataclass
            (e.g. ``{"ctpt_lambda": 20.0}`` for C-TPT); unknown names are an error.
    """

    steps: int = 3
    lr: float = 7e-3
    weight_decay: float = 5e-4
    eps: float = 1e-8
    optimizer: str = "adamw"
    k: int = 3
    sampling: str = "topk"
    temperature: float = 1.0
    baseline: str = "mean"
    normalize_advantages: bool = False
    selection: float = 0.1
    amp: str | None = "auto"
    grad_scaler_init: float = 1000.0
    momentum: float | None = None
    update_freq: int = 64
    update_w: float = 1.0
    train_mode: bool = False
    options: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.steps < 0:
            raise ValueError(f"steps must be >= 0, got {self.steps}")
        if self.optimizer not in ("adamw", "adam", "sgd"):
            raise ValueError(f"optimizer must be 'adamw', 'adam' or 'sgd', got '{self.optimizer}'")
        if self.sampling not in ("topk", "sample"):
            raise ValueError(f"sampling must be 'topk' or 'sample', got '{self.sampling}'")
        if self.amp not in AMP_MODES:
            raise ValueError(f"amp must be one of {AMP_MODES}, got '{self.amp}'")
        if not 0.0 < self.selection <= 1.0:
            raise ValueError(f"selection must be in (0, 1], got {self.selection}")

    def updated(self, **overrides: Any) -> "AdaptConfig":
        names = {f.name for f in fields(self)}
        unknown = sorted(set(overrides) - names)
        if unknown:
            raise TypeError(f"unknown AdaptConfig option(s) {unknown}; valid: {sorted(names)}")
        return replace(self, **overrides)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


class Flags:
    """What a sample's diagnostics (``Method.last_info["flags"]``) can say."""

    #: a loss or the prediction went non-finite: the sample got its unadapted prediction
    NAN_FALLBACK = "nan_fallback"


@dataclass(frozen=True)
class NoOptions:
    """A method without options of its own."""


def build_options(cls: type, values: dict[str, Any], method: str) -> Any:
    """``cls(**values)`` with unknown names and wrong types reported by option name."""
    names = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(values) - set(names))
    if unknown:
        raise TypeError(f"method '{method}' has no option(s) {unknown}; its options: {sorted(names) or 'none'}")
    out = cls(**values)
    for n, f in names.items():
        v, default = getattr(out, n), getattr(cls(), n)
        if isinstance(default, bool) != isinstance(v, bool) or (
                isinstance(default, (int, float)) and not isinstance(v, (int, float))) or (
                isinstance(default, str) and not isinstance(v, str)):
            raise TypeError(f"option '{n}' of method '{method}' expects {type(default).__name__}, got {v!r}")
    return out
