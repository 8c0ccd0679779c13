"""The episodic adaptation engine: snapshot -> adapt a few steps -> predict -> restore.

:class:`Method` is a drop-in wrapper (tent-style) around a policy. Subclasses only write
:meth:`Method.loss`; everything else (optimizer, mixed precision, NaN fallback, exact reset,
momentum reset point) lives here, once.
"""
from __future__ import annotations

import logging
import math
import time
from dataclasses import asdict, dataclass, field, fields, replace
from typing import Any, ClassVar

import torch
from torch import Tensor, nn

from .episodic import MomentumReset, restore, snapshot, trainable_named_parameters
from .policy import Episode

logger = logging.getLogger(__name__)

__all__ = ["AdaptConfig", "Method", "Flags", "AMP_MODES", "resolve_precision"]

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
    """Hyperparameters of one adaptation method (defaults: official RLCF prompt tuning).

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
        extra: method-specific options (e.g. ``{"ctpt_lambda": 20.0}``).
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
    extra: dict[str, Any] = field(default_factory=dict)

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
    NAN_FALLBACK = "nan_fallback"


class Method(nn.Module):
    """Base class of every adaptation method.

    Args:
        policy: the model being adapted; its parameters with ``requires_grad=True`` are tuned.
        reward: a reward callable (see :mod:`rlcf.reward`), for methods that need one.
        config: hyperparameters; ``None`` uses the method's ``default_config``.

    Calling the method on a sample (``method(views)``) adapts episodically and returns the
    prediction of a fresh no-grad forward on view 0; the trainable parameters, their buffers and
    the optimizer state are restored bit-exactly afterwards (unless the "-M" momentum variant
    moved the reset point). ``last_info`` holds per-sample diagnostics and flags.
    """

    name: ClassVar[str] = "base"
    episodic: ClassVar[bool] = True
    needs_reward: ClassVar[bool] = False
    default_config: ClassVar[AdaptConfig] = AdaptConfig()

    def __init__(self, policy: nn.Module, reward: Any = None, config: AdaptConfig | None = None) -> None:
        super().__init__()
        self.policy = policy
        self.reward = reward
        self.config = config if config is not None else replace(self.default_config)
        if self.needs_reward and reward is None:
            raise ValueError(f"method '{self.name}' needs a reward model (reward=...)")
        if not self.supports(policy):
            raise ValueError(f"method '{self.name}' does not support the policy {type(policy).__name__}")
        self.params = list(trainable_named_parameters(policy).values())
        if self.config.steps > 0 and not self.params:
            raise ValueError(f"method '{self.name}' has steps={self.config.steps} but the policy has no "
                             "trainable parameter (requires_grad=True)")
        self.optimizer = self._build_optimizer() if self.params else None
        self.snap = snapshot(policy, self.optimizer)
        c = self.config
        self.momentum = (MomentumReset(self.snap, c.momentum, c.update_freq, c.update_w)
                         if c.momentum is not None else None)
        self.scaler = None
        self.last_info: dict[str, Any] = {}

    # ----------------------------------------------------------------- set-up
    def _build_optimizer(self) -> torch.optim.Optimizer:
        c = self.config
        if c.optimizer == "sgd":
            return torch.optim.SGD(self.params, lr=c.lr, weight_decay=c.weight_decay)
        cls = torch.optim.AdamW if c.optimizer == "adamw" else torch.optim.Adam
        return cls(self.params, lr=c.lr, weight_decay=c.weight_decay, eps=c.eps)

    @property
    def device(self) -> torch.device:
        for p in self.policy.parameters():
            return p.device
        return torch.device("cpu")

    @property
    def precision(self) -> str:
        """The precision that runs: ``"fp16"``, ``"bf16"`` or ``"fp32"`` (``AdaptConfig.amp`` resolved)."""
        return resolve_precision(self.config.amp, self.device)

    def _autocast(self):
        prec = self.precision
        dtype = torch.bfloat16 if prec == "bf16" else torch.float16
        return torch.autocast(device_type=self.device.type, dtype=dtype, enabled=prec != "fp32")

    def _get_scaler(self) -> "torch.amp.GradScaler | None":
        """The run's fp16 GradScaler (created once, kept across samples as the official loops do)."""
        if self.precision == "fp16" and self.scaler is None:
            self.scaler = torch.amp.GradScaler(self.device.type, init_scale=self.config.grad_scaler_init)
        return self.scaler

    @classmethod
    def supports(cls, policy: nn.Module) -> bool:
        """Whether this method can adapt ``policy`` (e.g. prompt-only methods refuse encoder tuning)."""
        return True

    # ------------------------------------------------------------- the method
    def make_episode(self, views: Tensor) -> Episode:
        return Episode(self.policy, views, self.config.selection)

    def begin(self, ep: Episode) -> None:
        """Per-sample set-up before the first step (e.g. reward query features)."""

    def loss(self, ep: Episode, step: int) -> Tensor:
        """The objective of one step. Subclasses implement it."""
        raise NotImplementedError

    def predict(self, ep: Episode) -> Tensor:
        return ep.predict()

    # -------------------------------------------------------------- episodes
    def reset(self) -> None:
        """Restore the reset point: trainable parameters, their buffers, optimizer state."""
        restore(self.policy, self.snap, self.optimizer)

    def check_views(self, views: Tensor) -> Tensor:
        if not isinstance(views, Tensor):
            raise TypeError(f"sample must be a torch.Tensor of views, got {type(views).__name__}")
        if views.dim() == 3 and views.is_floating_point():
            views = views.unsqueeze(0)
        if views.shape[0] < 1:
            raise ValueError("sample has no views")
        return views.to(self.device)

    def forward(self, views: Tensor) -> Tensor | str:
        """Adapt on one sample and return its prediction (see class docstring)."""
        if torch.is_inference_mode_enabled():
            raise RuntimeError("rlcf adaptation needs autograd: call it under torch.no_grad(), "
                               "not torch.inference_mode()")
        views = self.check_views(views)
        t0 = time.perf_counter()
        info: dict[str, Any] = {"losses": [], "flags": []}
        modes = [(m, m.training) for m in self.policy.modules()]
        with torch.enable_grad():
            ep = self.make_episode(views)
            if self.config.steps > 0:
                self.begin(ep)
            ok = self._adapt(ep, info)
        self.policy.eval()
        with self._autocast():
            pred = self.predict(ep)
        if not ok or (isinstance(pred, Tensor) and not torch.isfinite(pred).all()):
            if Flags.NAN_FALLBACK not in info["flags"]:
                info["flags"].append(Flags.NAN_FALLBACK)
            logger.warning("non-finite loss or prediction during '%s' adaptation: using the unadapted "
                           "prediction", self.name)
            self.reset()
            with self._autocast():
                pred = self.predict(self.make_episode(views))
        elif self.momentum is not None and self.config.steps > 0:
            self.momentum.update(self.policy)
        self.reset()
        for m, mode in modes:
            m.training = mode
        info["selected"] = ep.selected.tolist() if ep.selected is not None else None
        info.update({k: v for k, v in ep.cache.items() if not k.startswith("_")})
        info["time"] = time.perf_counter() - t0
        info["precision"] = self.precision
        self.last_info = info
        return pred

    def _adapt(self, ep: Episode, info: dict[str, Any]) -> bool:
        opt, scaler = self.optimizer, self._get_scaler()
        self.policy.train(self.config.train_mode)
        for step in range(self.config.steps):
            with self._autocast():
                loss = self.loss(ep, step)
            lv = float(loss.detach())
            info["losses"].append(lv)
            if not math.isfinite(lv):
                return False
            opt.zero_grad(set_to_none=True)
            if scaler is not None:   # fp16: inf/NaN gradients skip the step and lower the scale
                scaler.scale(loss).backward()
                scale = scaler.get_scale()
                scaler.step(opt)
                scaler.update()
                if scaler.get_scale() < scale:
                    info["skipped_steps"] = info.get("skipped_steps", 0) + 1
            else:
                loss.backward()
                opt.step()
        return True
