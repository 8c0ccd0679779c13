"""The episodic adaptation engine: snapshot -> adapt a few steps -> predict -> restore.

:class:`Method` is a drop-in wrapper (tent-style) around a policy. A method writes its :meth:`Method.loss`
(gradient methods) or its :meth:`Method.predict` (training-free and online methods); everything else
(optimizer, mixed precision, NaN fallback, exact reset, momentum reset point, the stream state of online
methods, diagnostics) lives here, once. Every method goes through :meth:`Method.forward`.
"""
from __future__ import annotations

import dataclasses
import logging
import math
import time
from dataclasses import asdict, dataclass, field, fields, replace
from typing import Any, ClassVar, Sequence

import torch
from torch import Tensor, nn
from torch.profiler import record_function

from .episodic import MomentumReset, restore, snapshot, train_only, trainable_named_parameters
from .policy import Episode, Sample, Sampling

logger = logging.getLogger(__name__)

__all__ = ["AdaptConfig", "Method", "Flags", "AMP_MODES", "resolve_precision", "NoOptions"]

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


class Method(nn.Module):
    """Base class of every adaptation method.

    Args:
        policy: the model being adapted (:class:`rlcf.Policy`); what it declares with
            ``trainable_parameters()`` is tuned (else its parameters with ``requires_grad=True``). Only
            those require grad during the steps; every flag is restored after.
        reward: a reward callable ``reward(query, candidates) -> [B, K]`` (see :mod:`rlcf.reward`),
            for methods that need one.
        config: hyperparameters; ``None`` uses the method's ``default_config``. ``config.options``
            become :attr:`options`, an instance of the method's :attr:`Options` dataclass.

    Calling the method on a sample (``method(views)``) adapts episodically and returns the
    prediction (:meth:`predict`: a fresh no-grad forward of view 0 for discrete policies); the trainable
    parameters, their buffers and the optimizer state are restored bit-exactly afterwards (unless the
    "-M" momentum variant moved the reset point). ``last_info`` holds per-sample diagnostics and flags.

    Online methods (state carried across the test stream: TDA, every "-M" variant) say so with
    :attr:`online`; :meth:`reset_stream` starts a new stream and :meth:`stream_state` /
    :meth:`load_stream_state` checkpoint it.
    """

    name: ClassVar[str] = "base"
    episodic: ClassVar[bool] = True
    needs_reward: ClassVar[bool] = False
    default_config: ClassVar[AdaptConfig] = AdaptConfig()
    Options: ClassVar[type] = NoOptions
    #: the loss needs nothing but the policy's logits / rollouts, so B samples can share one batched forward
    #: (:mod:`rlcf.batched`); ``False``: a batch runs its samples one after the other
    batchable: ClassVar[bool] = True

    def __init__(self, policy: nn.Module, reward: Any = None, config: AdaptConfig | None = None) -> None:
        super().__init__()
        self.policy = policy
        self.reward = reward
        self.config = config if config is not None else replace(self.default_config)
        self.options = build_options(self.Options, dict(self.config.options), self.name)
        if self.needs_reward and reward is None:
            raise ValueError(f"method '{self.name}' needs a reward model (reward=...)")
        if not self.supports(policy):
            raise ValueError(f"method '{self.name}' does not support the policy {type(policy).__name__}")
        named = trainable_named_parameters(policy)
        self.param_names, self.params = list(named), list(named.values())
        if self.config.steps > 0 and not self.params:
            raise ValueError(f"method '{self.name}' has steps={self.config.steps} but the policy has no "
                             "trainable parameter (requires_grad=True)")
        self.optimizer = self._build_optimizer() if self.params else None
        self.snap = snapshot(policy, self.optimizer)
        c = self.config
        self.sampling = Sampling(c.k, c.sampling, c.temperature)
        self.momentum = (MomentumReset(self.snap, c.momentum, c.update_freq, c.update_w)
                         if c.momentum is not None else None)
        self.scaler = None
        self.last_info: dict[str, Any] = {}
        self.last_infos: list[dict[str, Any]] = []
        self._batch_workspace = None   # rlcf.batched: the stacked parameters and optimizer, kept across calls

    # ----------------------------------------------------------------- set-up
    def _build_optimizer(self, params: list[Tensor] | None = None, fused: bool = False) -> torch.optim.Optimizer:
        """The configured optimizer over ``params`` (default: the trainable parameters); ``fused``: torch's
        fused Adam/AdamW kernel (the batched workspace, :mod:`rlcf.batched`)."""
        c = self.config
        params = self.params if params is None else params
        if c.optimizer == "sgd":
            return torch.optim.SGD(params, lr=c.lr, weight_decay=c.weight_decay)
        cls = torch.optim.AdamW if c.optimizer == "adamw" else torch.optim.Adam
        return cls(params, lr=c.lr, weight_decay=c.weight_decay, eps=c.eps, **({"fused": True} if fused else {}))

    @property
    def device(self) -> torch.device:
        for p in self.policy.parameters():
            return p.device
        return torch.device("cpu")

    @property
    def precision(self) -> str:
        """The precision that runs: ``"fp16"``, ``"bf16"`` or ``"fp32"`` (``AdaptConfig.amp`` resolved)."""
        return resolve_precision(self.config.amp, self.device)

    @property
    def online(self) -> bool:
        """State is carried across samples (the stream order matters; sharding changes results)."""
        return not self.episodic or self.momentum is not None

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
    def begin(self, ep: Episode) -> None:
        """Per-sample set-up before the first step (optional)."""

    def loss(self, ep: Episode, step: int) -> Tensor:
        """The objective of one step (gradient methods implement it)."""
        raise NotImplementedError(f"method '{self.name}' has no loss: set steps=0 or implement loss()")

    def predict(self, ep: Episode) -> Any:
        """The prediction, after the steps (no grad, eval mode, autocast): the policy's by default;
        training-free and online methods (ZERO, TDA) override it."""
        return self.policy.predict(ep)

    # -------------------------------------------------------- episodes, streams
    def reset(self) -> None:
        """Restore the reset point: trainable parameters, their buffers, optimizer state."""
        restore(self.policy, self.snap, self.optimizer)

    def reset_stream(self) -> None:
        """Start a new test stream: forget what earlier samples left (the "-M" EMA and reset point;
        subclasses add their own state, e.g. TDA's caches)."""
        if self.momentum is not None:
            self.momentum.reset()
            self.reset()

    def stream_state(self) -> dict[str, Any]:
        """What an online method carries across samples, as a checkpointable dict."""
        return {"momentum": self.momentum.state_dict()} if self.momentum is not None else {}

    def load_stream_state(self, state: dict[str, Any]) -> None:
        """Restore :meth:`stream_state` (e.g. to resume a stream)."""
        if self.momentum is not None and "momentum" in state:
            self.momentum.load_state_dict(state["momentum"])
            self.reset()

    def check_sample(self, sample: Sample) -> Tensor | list[str]:
        """``[V, ...]`` views (a single ``[3, H, W]`` image becomes one view) on the method's device, or
        a list of text queries (a string becomes one)."""
        if isinstance(sample, str):
            return [sample]
        if isinstance(sample, (list, tuple)) and sample and all(isinstance(s, str) for s in sample):
            return list(sample)
        if not isinstance(sample, Tensor):
            raise TypeError(f"sample must be a torch.Tensor of views or text queries (str), "
                            f"got {type(sample).__name__}")
        if sample.dim() == 3 and sample.is_floating_point():
            sample = sample.unsqueeze(0)
        if sample.shape[0] < 1:
            raise ValueError("sample has no views")
        return sample.to(self.device)

    def make_episode(self, sample: Sample) -> Episode:
        return Episode(self.check_sample(sample), self.config.selection)

    def forward(self, sample: Sample | Sequence[Tensor]) -> Any:
        """Adapt on one sample and return its prediction (see class docstring). A batch (``[B, V, 3, H, W]``
        or a list of B view tensors) returns B predictions: :meth:`forward_batch`."""
        if (isinstance(sample, Tensor) and sample.dim() == 5) or (
                isinstance(sample, (list, tuple)) and sample and all(isinstance(s, Tensor) for s in sample)):
            return self.forward_batch(list(sample))
        if torch.is_inference_mode_enabled():
            raise RuntimeError("rlcf adaptation needs autograd: call it under torch.no_grad(), "
                               "not torch.inference_mode()")
        t0 = time.perf_counter()
        ep = self.make_episode(sample)
        info: dict[str, Any] = {"losses": [], "flags": []}
        modes = [(m, m.training) for m in self.policy.modules()]
        ok = True
        if self.config.steps > 0:
            with torch.enable_grad():
                self.begin(ep)
                ok = self._adapt(ep, info)
        self.policy.eval()
        with torch.no_grad(), self._autocast(), record_function("rlcf/predict"):
            pred = self.predict(ep)
        if not ok or (isinstance(pred, Tensor) and not torch.isfinite(pred).all()):
            info["flags"].append(Flags.NAN_FALLBACK)
            logger.warning("non-finite loss or prediction during '%s' adaptation: using the unadapted "
                           "prediction", self.name)
            self.reset()
            with torch.no_grad(), self._autocast():
                pred = self.predict(self.make_episode(sample))
        elif self.momentum is not None and self.config.steps > 0:
            self.momentum.update(self.policy)
        if self.config.steps > 0:
            self.reset()
        for m, mode in modes:
            m.training = mode
        info["selected"] = ep.selected.tolist() if ep.selected is not None else None
        info.update(ep.info)
        info["time"] = time.perf_counter() - t0
        info["precision"] = self.precision
        self.last_info = info
        return pred

    def forward_batch(self, samples: Sequence[Sample]) -> list[Any]:
        """Adapt B samples at once, each with its own parameters and optimizer state, and return their B
        predictions, each equal to what it gets alone (:mod:`rlcf.batched`); ``last_infos`` holds one
        diagnostics dict per sample. Online and momentum methods refuse (their stream order is the method)."""
        from .batched import adapt_batch

        return adapt_batch(self, samples)

    def _adapt(self, ep: Episode, info: dict[str, Any]) -> bool:
        with train_only(self.policy, self.params):
            return self._steps(ep, info)

    def _steps(self, ep: Episode, info: dict[str, Any]) -> bool:
        opt, scaler = self.optimizer, self._get_scaler()
        self.policy.train(self.config.train_mode)
        for step in range(self.config.steps):
            with self._autocast(), record_function("rlcf/losses (per sample)"):
                loss = self.loss(ep, step)
            lv = float(loss.detach())
            info["losses"].append(lv)
            if not math.isfinite(lv):
                return False
            opt.zero_grad(set_to_none=True)
            if scaler is not None:   # fp16: inf/NaN gradients skip the step and lower the scale
                with record_function("rlcf/backward"):
                    scaler.scale(loss).backward()
                scale = scaler.get_scale()
                with record_function("rlcf/optimizer"):
                    scaler.step(opt)
                    scaler.update()
                if scaler.get_scale() < scale:
                    info["skipped_steps"] = info.get("skipped_steps", 0) + 1
            else:
                with record_function("rlcf/backward"):
                    loss.backward()
                with record_function("rlcf/optimizer"):
                    opt.step()
        return True
