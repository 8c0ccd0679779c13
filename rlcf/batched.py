"""Batched episodes: adapt B test samples at once, each with its own parameters and optimizer state.

The method does not change: B samples, B independent parameter sets, B independent optimisers, and
each sample's prediction equals what it gets alone (fp32: within float tolerance). How:

* the trainable parameters are stacked into one tensor per parameter, ``[B, ...]``; the policy's real
  parameters are never touched, so nothing needs restoring;
* the policy runs once per step for the whole batch (:meth:`DiscretePolicy.forward_stacked`):
  ``torch.func.functional_call`` under ``torch.func.vmap`` over the stacked parameters (encoder tuning,
  retrieval); prompt tuning runs one ordinary text pass over ``B x C`` prompts built from the per-sample
  contexts ``[B, n_ctx, W]`` (no vmap: the frozen tower keeps its fused attention kernels);
* the loss is the *sum* of the per-sample losses, so one optimizer over the stacked tensors is B
  independent optimizers (AdamW's update is elementwise; its step count is shared and equal, since every
  sample takes the same steps; weight decay is elementwise); for Adam/AdamW over fp32 parameters it is
  torch's fused kernel, and it, the stacked tensors and their gradients are kept across calls and reset in
  place (:class:`_Workspace`);
* a sample whose loss goes non-finite leaves the sum and falls back alone to its unadapted prediction;
* the method's own ``loss`` runs per sample, unchanged: it asks the policy for the selected views' logits,
  which are slices of the batched computation (:class:`BatchContext`).

Refused (a clear error): online and momentum methods (the stream order is the method), BatchNorm in train
mode (its batch statistics would mix samples under the stacked forward). Methods whose loss needs more than
the policy's logits (C-TPT's class features) and generative policies run their samples one after the other
(same results, no speed-up). fp16: the run's single GradScaler sees the batch's summed loss, so an overflow
in one sample skips that step for the whole batch (sequentially: for that sample only, and the lower scale
then applies to the next samples). fp32 results equal the sequential ones within float tolerance, bf16
ones only up to bf16 rounding (a near-tie in view confidence can then select another view).
"""
from __future__ import annotations

import logging
import math
import time
from typing import TYPE_CHECKING, Any, Sequence

import torch
from torch import Tensor, nn
from torch.profiler import record_function

from .episodic import train_only
from .losses import select_confident
from .policy import DiscretePolicy, Episode

if TYPE_CHECKING:   # pragma: no cover
    from .engine import Method

logger = logging.getLogger(__name__)

__all__ = ["BatchContext", "adapt_batch", "batch_refusal"]


def batch_refusal(method: "Method") -> str | None:
    """Why ``method`` cannot adapt a batch at once (``None``: it can; a sequential loop is not a refusal)."""
    if method.online:
        return (f"method '{method.name}' is online (state carried across the stream): its stream order is the method, "
                "so it cannot adapt samples in parallel; use run.batch=1")
    return None


def _stackable(method: "Method") -> bool:
    return (method.config.steps > 0 and isinstance(method.policy, DiscretePolicy) and method.batchable
            and getattr(method.policy, "supports_batch", True))


class BatchContext:
    """The batched forward of one step, shared by the B episodes of a batch.

    Each episode's ``batch`` attribute points here; :meth:`DiscretePolicy.selected_logits` of an episode
    in a batch returns its slice of :meth:`selected_logits`, computed once per step for the whole batch.
    """

    def __init__(self, policy: DiscretePolicy, episodes: Sequence[Episode], stacked: dict[str, Tensor],
                 reward: Any = None) -> None:
        self.policy, self.episodes, self.stacked, self.reward = policy, list(episodes), stacked, reward
        self._logits: Tensor | None = None
        for b, ep in enumerate(self.episodes):
            ep.batch, ep.batch_index = self, b
        self.inputs = policy.batch_inputs([ep.inputs for ep in self.episodes])   # [B, V, ...]

    # --------------------------------------------------------------------- functional calls
    def _call(self, x: Tensor | None = None, query: Tensor | None = None) -> Tensor:
        """``policy(x)`` (or ``policy(query=...)``) with the stacked parameters, for the whole batch."""
        images = x is not None and x.is_floating_point()   # t2i's trainable query is text (token ids)
        with record_function("rlcf/policy (image tower)" if images else "rlcf/policy (text tower)"):
            return self.policy.forward_stacked(self.stacked, x, query=query)

    def new_step(self) -> None:
        self._logits = None

    def _frozen_queries(self) -> Tensor:
        """``[B, V, D]`` query features of every view, one pass for the whole batch (frozen query side)."""
        p = self.policy
        if self.episodes[0].query_features is None:
            flat = self.inputs.flatten(0, 1)
            with torch.no_grad(), record_function("rlcf/policy (image tower)"):
                q = p.encode_query(flat).detach()
            q = q.view(len(self.episodes), -1, q.shape[-1])
            for ep, qb in zip(self.episodes, q):
                ep.query_features = qb
        return torch.stack([ep.query_features for ep in self.episodes])

    def _select(self, ranking_logits: Tensor) -> None:
        for ep, lg in zip(self.episodes, ranking_logits):
            ep.selected = (torch.arange(lg.shape[0], device=lg.device) if ep.selection >= 1.0
                           else select_confident(lg, ep.selection))
        if hasattr(self.reward, "prefetch"):   # the B samples' reward queries in one pass of the reward model
            with record_function("rlcf/reward"):
                self.reward.prefetch([ep.selected_inputs for ep in self.episodes])

    def _gather(self, x: Tensor) -> Tensor:
        return torch.stack([x[b, ep.selected.to(x.device)] for b, ep in enumerate(self.episodes)])

    def selected_logits(self, ep: Episode) -> Tensor:
        """Episode ``ep``'s ``[S, C]`` logits of this step (see :meth:`DiscretePolicy.selected_logits`)."""
        if self._logits is None:
            p = self.policy
            if p.query_trainable:
                if self.episodes[0].selected is None:
                    if self.episodes[0].selection < 1.0:   # rank the views with the (identical) reset-point weights
                        with torch.no_grad(), record_function("rlcf/policy (image tower)"):
                            flat = p.logits(p.encode_query(self.inputs.flatten(0, 1)))
                        self._select(flat.view(len(self.episodes), -1, flat.shape[-1]))
                    else:
                        self._select(torch.zeros(len(self.episodes), self.inputs.shape[1], 1))
                self._logits = self._call(x=self._gather(self.inputs))
            else:
                q = self._frozen_queries()
                if self.episodes[0].selected is None:
                    all_logits = self._call(query=q)
                    self._select(all_logits.detach())
                    self._logits = self._gather(all_logits)
                else:
                    self._logits = self._call(query=self._gather(q))
        return self._logits[ep.batch_index]

    @torch.no_grad()
    def predict(self) -> Tensor:
        """``[B, C]`` float32 predictions of view 0 with each sample's adapted parameters."""
        p = self.policy
        if p.query_trainable:
            return self._call(x=self.inputs[:, :1])[:, 0].float()
        return self._call(query=self._frozen_queries()[:, :1])[:, 0].float()


def _check_no_train_batchnorm(policy: nn.Module) -> None:
    bns = [n for n, m in policy.named_modules() if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.training]
    if bns:
        raise ValueError(f"batched episodes refuse BatchNorm in train mode ({bns[0]}, ...): its batch statistics "
                         "would mix the samples; use train_mode=false (BN in eval) or run.batch=1")


def adapt_batch(method: "Method", samples: Sequence[Any]) -> list[Any]:
    """Adapt and predict ``samples`` (each as ``method`` takes one); returns B predictions and sets
    ``method.last_infos`` (one diagnostics dict per sample) and ``method.last_info`` (the last one)."""
    reason = batch_refusal(method)
    if reason is not None:
        raise ValueError(reason)
    if torch.is_inference_mode_enabled():
        raise RuntimeError("rlcf adaptation needs autograd: call it under torch.no_grad(), not torch.inference_mode()")
    if not _stackable(method) or len(samples) == 1 or not _same_shape(method, samples):
        preds, infos = [], []
        for s in samples:
            preds.append(method(s))
            infos.append(method.last_info)
        method.last_infos = infos
        return preds
    t0 = time.perf_counter()
    policy, c = method.policy, method.config
    eps = [method.make_episode(s) for s in samples]
    b_count = len(eps)
    with record_function("rlcf/workspace reset"):
        ws = _workspace(method, b_count)
    stacked, opt = ws.stacked, ws.opt
    ctx = BatchContext(policy, eps, stacked, method.reward)
    scaler = method._get_scaler()
    infos: list[dict[str, Any]] = [{"losses": [], "flags": []} for _ in eps]
    alive = [True] * b_count
    modes = [(m, m.training) for m in policy.modules()]
    try:
        with torch.enable_grad(), train_only(policy, ()):
            policy.train(c.train_mode)
            _check_no_train_batchnorm(policy)
            for ep in eps:
                method.begin(ep)
            for step in range(c.steps):
                ctx.new_step()
                total = None
                with method._autocast(), record_function("rlcf/losses (per sample)"):
                    for b, ep in enumerate(eps):
                        if not alive[b]:
                            continue
                        loss = method.loss(ep, step)
                        lv = float(loss.detach())
                        infos[b]["losses"].append(lv)
                        if not math.isfinite(lv):
                            alive[b] = False
                            continue
                        total = loss if total is None else total + loss
                if total is None:
                    break
                opt.zero_grad(set_to_none=False)   # reuse the gradient buffers (0 + g is g exactly)
                if scaler is not None:
                    with record_function("rlcf/backward"):
                        scaler.scale(total).backward()
                    ws.drop_untouched()
                    scale = scaler.get_scale()
                    with record_function("rlcf/optimizer"):
                        scaler.step(opt)
                        scaler.update()
                    if scaler.get_scale() < scale:
                        for b in range(b_count):
                            if alive[b]:
                                infos[b]["skipped_steps"] = infos[b].get("skipped_steps", 0) + 1
                else:
                    with record_function("rlcf/backward"):
                        total.backward()
                    ws.drop_untouched()
                    with record_function("rlcf/optimizer"):
                        opt.step()
        policy.eval()
        with torch.no_grad(), method._autocast(), record_function("rlcf/predict"):
            batch_pred = ctx.predict()
    except BaseException:
        method._batch_workspace = None   # e.g. out of memory: the runner retries with a smaller B
        raise
    finally:
        for m, mode in modes:
            m.training = mode
    preds = []
    for b, ep in enumerate(eps):
        pred = batch_pred[b]
        if not alive[b] or not torch.isfinite(pred).all():
            infos[b]["flags"].append("nan_fallback")
            logger.warning("non-finite loss or prediction during '%s' adaptation of batch sample %d: using its "
                           "unadapted prediction", method.name, b)
            with torch.no_grad(), method._autocast():
                pred = method.predict(method.make_episode(samples[b]))
        preds.append(pred)
        infos[b]["selected"] = ep.selected.tolist() if ep.selected is not None else None
        infos[b].update(ep.info)
        infos[b]["precision"] = method.precision
        infos[b]["batch"] = b_count
    elapsed = time.perf_counter() - t0
    for info in infos:
        info["time"] = elapsed / b_count
    method.last_infos = infos
    method.last_info = infos[-1]
    return preds


class _Workspace:
    """The stacked parameters ``[B, ...]``, their gradient buffers and the optimizer of one batch size, kept
    on the method across calls and reset in place: the values each call starts from are those of fresh
    tensors (the reset-point parameters, zero gradients, zero optimizer state at step 0).

    Why kept: on CPU, fresh ``[B, ...]`` copies of a ViT's weights per call (and per step: gradients,
    the optimizer's temporaries) are large blocks that glibc maps and unmaps each time, and their page
    faults cost more than the batched forward saves (ViT-B/32 encoder tuning, B=4, 2 cores: 0.55x of
    one-at-a-time before, see README). The optimizer is the fused kernel where torch has one (Adam/AdamW,
    fp32 parameters on CPU or CUDA): the same update with no temporaries, equal to the default
    implementation within float rounding (about one ulp per step), which the batch tolerance covers.

    Gradient buffers are reused (``zero_grad(set_to_none=False)``); a parameter that the step's backward did
    not reach (a hook records the ones it did) gets ``grad = None`` before the optimizer runs, so it is skipped
    as on the sequential path instead of stepped with a zero gradient (which weight decay would move).
    """

    def __init__(self, method: "Method", b: int) -> None:
        named = dict(zip(method.param_names, method.params))
        self.key = _workspace_key(method, b)
        self.stacked = {n: p.detach().unsqueeze(0).repeat(b, *([1] * p.dim())).requires_grad_(True)
                        for n, p in named.items()}
        params = list(self.stacked.values())
        fused = method.config.optimizer in ("adam", "adamw") and all(
            p.dtype == torch.float32 and p.device.type in ("cpu", "cuda") for p in params)
        self.opt = method._build_optimizer(params, fused=fused)
        self.fresh = True
        touched: set[int] = set()   # the hooks hold the set, not the workspace: no cycle keeps it alive once dropped
        self.touched = touched
        for p in params:
            p.register_post_accumulate_grad_hook(lambda t: touched.add(id(t)))

    def drop_untouched(self) -> None:
        """After a backward: ``grad = None`` for every stacked parameter the backward did not reach."""
        for p in self.stacked.values():
            if id(p) not in self.touched:
                p.grad = None
        self.touched.clear()

    @torch.no_grad()
    def reset(self, method: "Method") -> None:
        """Back to what fresh tensors give: the method's reset-point parameters in every row, zero gradients,
        a fresh optimizer state (Adam: its state tensors zeroed, step 0 included; others: cleared)."""
        if self.fresh:
            self.fresh = False
            return
        for dst, p in zip(self.stacked.values(), method.params):
            dst.copy_(p.unsqueeze(0).expand_as(dst))
            if dst.grad is not None:
                dst.grad.zero_()
        if isinstance(self.opt, (torch.optim.Adam, torch.optim.AdamW)):   # fresh Adam state is all zeros
            for st in self.opt.state.values():
                for v in st.values():
                    if torch.is_tensor(v):
                        v.zero_()
        else:
            self.opt.state.clear()


WorkspaceKey = tuple[int, tuple[tuple[str, tuple[int, ...], torch.dtype, torch.device], ...]]


def _workspace_key(method: "Method", b: int) -> WorkspaceKey:
    """What a workspace is built for: B and every trainable parameter's name, shape, dtype and device."""
    return (b, tuple((n, tuple(p.shape), p.dtype, p.device) for n, p in zip(method.param_names, method.params)))


def _workspace(method: "Method", b: int) -> _Workspace:
    ws = getattr(method, "_batch_workspace", None)
    if ws is None or ws.key != _workspace_key(method, b):
        method._batch_workspace = None   # free the old one before building the new one
        ws = method._batch_workspace = _Workspace(method, b)
    ws.reset(method)
    return ws


def _same_shape(method: "Method", samples: Sequence[Any]) -> bool:
    shapes = {tuple(method.policy.as_tensor(method.check_sample(s)).shape) for s in samples}
    return len(shapes) == 1
