"""The episodic adaptation engine: snapshot -> adapt a few steps -> predict -> restore.

:class:`Method` is a drop-in wrapper (tent-style) around a policy. A method writes its :meth:`Method.loss`
(gradient methods) or its :meth:`Method.predict` (training-free and online methods); everything else
(optimizer, mixed precision, NaN fallback, exact reset, momentum reset point, the stream state of online
methods, diagnostics) lives here, once, in one step loop for one sample and for B samples at once: a forward
provider (:mod:`rlcf.forward`) says how the policy runs, a workspace (:mod:`rlcf.workspace`) which parameters the
steps train. Every method goes through :meth:`Method.forward`.
"""
from __future__ import annotations

import logging
import math
import time
from dataclasses import replace
from typing import Any, ClassVar, Sequence

import torch
from torch import Tensor, nn
from torch.profiler import record_function

from .config import AdaptConfig, Flags, NoOptions, build_options, resolve_precision
from .episodic import MomentumReset, restore, snapshot, trainable_named_parameters
from .forward import OwnForward, StackedForward, check_no_train_batchnorm
from .policy import DiscretePolicy, Episode, Sample, Sampling
from .workspace import OwnWorkspace, StackedWorkspace, Workspace, build_optimizer, workspace_key

logger = logging.getLogger(__name__)

__all__ = ["Method", "batch_refusal"]


def batch_refusal(method: "Method") -> str | None:
    """Why ``method`` cannot adapt a batch at once (``None``: it can; a sequential loop is not a refusal)."""
    if method.online:
        return (f"method '{method.name}' is online (state carried across the stream): its stream order is the method, "
                "so it cannot adapt samples in parallel; use run.batch=1")
    return None


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
    #: the loss needs nothing but the policy's logits of the selected views, so B samples can share one batched
    #: forward (:class:`rlcf.forward.StackedForward`); ``False``: a batch runs its samples one after the other
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
        self.optimizer = build_optimizer(self.params, self.config) if self.params else None
        self.snap = snapshot(policy, self.optimizer)
        c = self.config
        self.sampling = Sampling(c.k, c.sampling, c.temperature)
        self.momentum = (MomentumReset(self.snap, c.momentum, c.update_freq, c.update_w)
                         if c.momentum is not None else None)
        self.scaler = None
        self.last_info: dict[str, Any] = {}
        self.last_infos: list[dict[str, Any]] = []
        #: the B stacked parameter copies and their optimizer of the last batch, kept across calls of the same B
        self.stacked_workspace: StackedWorkspace | None = None

    # ----------------------------------------------------------------- set-up
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
        _check_autograd()
        return self._episodes([sample], stacked=False)[0]

    def forward_batch(self, samples: Sequence[Sample]) -> list[Any]:
        """Adapt B samples at once, each with its own parameters and optimizer state, and return their B
        predictions, each equal to what it gets alone (:mod:`rlcf.forward`); ``last_infos`` holds one
        diagnostics dict per sample. Online and momentum methods refuse (their stream order is the method)."""
        reason = batch_refusal(self)
        if reason is not None:
            raise ValueError(reason)
        _check_autograd()
        if not self._stackable() or len(samples) == 1 or not self._same_shape(samples):
            preds, infos = [], []
            for s in samples:
                preds.append(self(s))
                infos.append(self.last_info)
            self.last_infos = infos
            return preds
        return self._episodes(samples, stacked=True)

    def _stackable(self) -> bool:
        return (self.config.steps > 0 and isinstance(self.policy, DiscretePolicy) and self.batchable
                and getattr(self.policy, "supports_batch", True))

    def _same_shape(self, samples: Sequence[Sample]) -> bool:
        return len({tuple(self.policy.as_tensor(self.check_sample(s)).shape) for s in samples}) == 1

    def _workspace(self, b: int | None) -> Workspace:
        """The policy's own parameters (``b=None``: one sample), or the kept stacked workspace for ``b`` samples,
        reset to a fresh start."""
        if b is None:
            return OwnWorkspace(self.policy, self.params, self.optimizer, self.reset)
        ws = self.stacked_workspace
        if ws is None or ws.key != workspace_key(self.param_names, self.params, b):
            self.stacked_workspace = None   # free the old one before building the new one
            ws = self.stacked_workspace = StackedWorkspace(self.policy, self.param_names, self.params, b, self.config)
        ws.reset()
        return ws

    # ------------------------------------------------------------------- the step loop
    def _episodes(self, samples: Sequence[Sample], stacked: bool) -> list[Any]:
        """Adapt and predict ``samples`` (one, or B at once with ``stacked``); sets ``last_info(s)``."""
        t0 = time.perf_counter()
        eps = [self.make_episode(s) for s in samples]
        infos: list[dict[str, Any]] = [{"losses": [], "flags": []} for _ in eps]
        alive = [True] * len(eps)
        adapt = self.config.steps > 0
        ws: Workspace | None = None
        modes = [(m, m.training) for m in self.policy.modules()]
        try:
            if adapt and stacked:
                with record_function("rlcf/workspace reset"):
                    ws = self._workspace(len(eps))
            elif adapt:
                ws = self._workspace(None)
            fwd = StackedForward(self.policy, eps, ws.stacked, self.reward) if stacked else OwnForward(eps)
            if adapt:
                with torch.enable_grad(), ws.trainable():
                    self.policy.train(self.config.train_mode)
                    if stacked:
                        check_no_train_batchnorm(self.policy)
                    for ep in eps:
                        self.begin(ep)
                    self._steps(eps, fwd, ws, infos, alive)
            self.policy.eval()
            with torch.no_grad(), self._autocast(), record_function("rlcf/predict"):
                preds = fwd.predict(self.predict)
            for b, pred in enumerate(preds):
                if not alive[b] or (isinstance(pred, Tensor) and not torch.isfinite(pred).all()):
                    infos[b]["flags"].append(Flags.NAN_FALLBACK)
                    logger.warning("non-finite loss or prediction during '%s' adaptation%s: using the unadapted "
                                   "prediction", self.name, f" of batch sample {b}" if stacked else "")
                    if ws is not None:
                        ws.restore()
                    with torch.no_grad(), self._autocast():
                        preds[b] = self.predict(self.make_episode(samples[b]))
                elif self.momentum is not None and adapt:
                    self.momentum.update(self.policy)
            if ws is not None:
                ws.restore()
        except BaseException:
            if stacked:
                self.stacked_workspace = None   # e.g. out of memory: the runner retries with a smaller B
            elif ws is not None:
                ws.restore()
            raise
        finally:
            for m, mode in modes:
                m.training = mode
        elapsed = time.perf_counter() - t0
        for ep, info in zip(eps, infos):
            info["selected"] = ep.selected.tolist() if ep.selected is not None else None
            info.update(ep.info)
            info["time"] = elapsed / len(eps)
            info["precision"] = self.precision
            if stacked:
                info["batch"] = len(eps)
        self.last_infos, self.last_info = infos, infos[-1]
        return preds

    def _steps(self, eps: list[Episode], fwd: OwnForward | StackedForward, ws: Workspace,
               infos: list[dict[str, Any]], alive: list[bool]) -> None:
        """``config.steps`` steps; the loss is the sum of the live samples' losses. A sample whose loss goes
        non-finite leaves the sum (``alive[b] = False``) and later falls back alone."""
        scaler = self._get_scaler()
        for step in range(self.config.steps):
            total = None
            with self._autocast(), record_function("rlcf/losses (per sample)"):
                fwd.begin_step(step)
                for b, ep in enumerate(eps):
                    if not alive[b]:
                        continue
                    loss = self.loss(ep, step)
                    lv = float(loss.detach())
                    infos[b]["losses"].append(lv)
                    if not math.isfinite(lv):
                        alive[b] = False
                        continue
                    total = loss if total is None else total + loss
            if total is None:
                return
            ws.zero_grad()
            if scaler is not None:   # fp16: inf/NaN gradients skip the step and lower the scale
                with record_function("rlcf/backward"):
                    scaler.scale(total).backward()
                ws.after_backward()
                scale = scaler.get_scale()
                with record_function("rlcf/optimizer"):
                    scaler.step(ws.optimizer)
                    scaler.update()
                if scaler.get_scale() < scale:
                    for b, info in enumerate(infos):
                        if alive[b]:
                            info["skipped_steps"] = info.get("skipped_steps", 0) + 1
            else:
                with record_function("rlcf/backward"):
                    total.backward()
                ws.after_backward()
                with record_function("rlcf/optimizer"):
                    ws.optimizer.step()


def _check_autograd() -> None:
    if torch.is_inference_mode_enabled():
        raise RuntimeError("rlcf adaptation needs autograd: call it under torch.no_grad(), not torch.inference_mode()")
