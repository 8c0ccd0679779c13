"""Where the steps of an episode write: the policy's own parameters (one sample) or B stacked copies (a batch).

The engine's step loop (:meth:`rlcf.Method.forward`) is the same for both; a workspace says which parameters the
steps train and with which optimizer, how gradients are zeroed, what follows each backward, and how the policy
gets back to its reset point after the episode.

* :class:`OwnWorkspace`: the policy's trainable parameters and the method's optimizer; afterwards the snapshot is
  restored bit-exactly.
* :class:`StackedWorkspace`: one ``[B, ...]`` tensor per trainable parameter and one optimizer over them, so B
  samples adapt at once with independent parameters (the loss is the sum of the per-sample losses, and Adam's,
  AdamW's and SGD's updates are elementwise, so one optimizer over the stacked tensors is B independent ones). The
  policy's own parameters are never touched. It is kept across calls of the same B and reset in place.
"""
from __future__ import annotations

from contextlib import AbstractContextManager
from typing import Callable, Sequence

import torch
from torch import Tensor, nn

from .config import AdaptConfig
from .episodic import train_only

__all__ = ["build_optimizer", "Workspace", "OwnWorkspace", "StackedWorkspace"]


def build_optimizer(params: Sequence[Tensor], config: AdaptConfig, fused: bool = False) -> torch.optim.Optimizer:
    """The optimizer ``config`` names over ``params``; ``fused``: torch's fused Adam / AdamW kernel."""
    c = config
    if c.optimizer == "sgd":
        return torch.optim.SGD(params, lr=c.lr, weight_decay=c.weight_decay)
    cls = torch.optim.AdamW if c.optimizer == "adamw" else torch.optim.Adam
    return cls(params, lr=c.lr, weight_decay=c.weight_decay, eps=c.eps, **({"fused": True} if fused else {}))


class Workspace:
    """The parameters an episode's steps train, and their optimizer (see the module docstring)."""

    optimizer: torch.optim.Optimizer

    def trainable(self) -> AbstractContextManager:
        """Within it, exactly the policy parameters the steps train require grad."""
        raise NotImplementedError

    def zero_grad(self) -> None:
        raise NotImplementedError

    def after_backward(self) -> None:
        """After each backward, before the optimizer step."""

    def restore(self) -> None:
        """Back to the reset point (after the episode, or before an unadapted fallback prediction)."""


class OwnWorkspace(Workspace):
    """One sample: the policy's own trainable parameters and optimizer; ``reset`` restores the snapshot."""

    def __init__(self, policy: nn.Module, params: Sequence[nn.Parameter], optimizer: torch.optim.Optimizer,
                 reset: Callable[[], None]) -> None:
        self.policy, self.params, self.optimizer, self._reset = policy, list(params), optimizer, reset

    def trainable(self) -> AbstractContextManager:
        return train_only(self.policy, self.params)

    def zero_grad(self) -> None:
        self.optimizer.zero_grad(set_to_none=True)

    def restore(self) -> None:
        self._reset()


WorkspaceKey = tuple[int, tuple[tuple[str, tuple[int, ...], torch.dtype, torch.device], ...]]


def workspace_key(names: Sequence[str], params: Sequence[Tensor], b: int) -> WorkspaceKey:
    """What a stacked workspace is built for: B and every trainable parameter's name, shape, dtype and device."""
    return (b, tuple((n, tuple(p.shape), p.dtype, p.device) for n, p in zip(names, params)))


class StackedWorkspace(Workspace):
    """B stacked copies ``[B, ...]`` of the trainable parameters (:attr:`stacked`, by name), their gradient buffers
    and one optimizer over them. :meth:`reset` brings them back in place to what fresh tensors give: the reset-point
    parameters (read from ``params``, the policy's own) in every row, zero gradients, a fresh optimizer state.

    Kept across calls: on CPU, fresh ``[B, ...]`` copies of a ViT's weights per call (and per step: gradients, the
    optimizer's temporaries) are large blocks that glibc maps and unmaps each time, and their page faults cost more
    than the batched forward saves. The optimizer is the fused kernel where torch has one (Adam/AdamW, fp32
    parameters on CPU or CUDA): the same update with no temporaries, equal to the default implementation within
    float rounding (about one ulp per step).

    Gradient buffers are reused (``zero_grad(set_to_none=False)``); a parameter that the step's backward did not
    reach (a hook records the ones it did) gets ``grad = None`` before the optimizer runs (:meth:`after_backward`),
    so it is skipped as on the one-sample path instead of stepped with a zero gradient (which weight decay would
    move).
    """

    def __init__(self, policy: nn.Module, names: Sequence[str], params: Sequence[nn.Parameter], b: int,
                 config: AdaptConfig) -> None:
        self.policy, self.params = policy, list(params)
        self.key = workspace_key(names, self.params, b)
        self.stacked = {n: p.detach().unsqueeze(0).repeat(b, *([1] * p.dim())).requires_grad_(True)
                        for n, p in zip(names, self.params)}
        stacked = list(self.stacked.values())
        fused = config.optimizer in ("adam", "adamw") and all(
            p.dtype == torch.float32 and p.device.type in ("cpu", "cuda") for p in stacked)
        self.optimizer = build_optimizer(stacked, config, fused=fused)
        self.fresh = True
        touched: set[int] = set()   # the hooks hold the set, not the workspace: no cycle keeps it alive once dropped
        self.touched = touched
        for p in stacked:
            p.register_post_accumulate_grad_hook(lambda t: touched.add(id(t)))

    def trainable(self) -> AbstractContextManager:
        return train_only(self.policy, ())   # the policy's own parameters stay as they are

    def zero_grad(self) -> None:
        self.optimizer.zero_grad(set_to_none=False)   # reuse the gradient buffers (0 + g is g exactly)

    def after_backward(self) -> None:
        """``grad = None`` for every stacked parameter the backward did not reach."""
        for p in self.stacked.values():
            if id(p) not in self.touched:
                p.grad = None
        self.touched.clear()

    @torch.no_grad()
    def reset(self) -> None:
        """Back to what fresh tensors give (Adam: its state tensors zeroed, step 0 included; others: cleared)."""
        if self.fresh:
            self.fresh = False
            return
        for dst, p in zip(self.stacked.values(), self.params):
            dst.copy_(p.unsqueeze(0).expand_as(dst))
            if dst.grad is not None:
                dst.grad.zero_()
        if isinstance(self.optimizer, (torch.optim.Adam, torch.optim.AdamW)):   # fresh Adam state is all zeros
            for st in self.optimizer.state.values():
                for v in st.values():
                    if torch.is_tensor(v):
                        v.zero_()
        else:
            self.optimizer.state.clear()
