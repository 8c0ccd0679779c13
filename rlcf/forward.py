"""Forward providers: how the policy runs during an episode's steps, for one sample or for B stacked samples.

The engine's step loop (:meth:`rlcf.Method.forward`) calls :meth:`begin_step` before each step's losses and
:meth:`predict` after the steps. The method's own ``loss`` runs per sample, unchanged, in both cases:

* :class:`OwnForward` (one sample): nothing ahead of the loss; the policy computes what the loss asks for;
* :class:`StackedForward` (B samples, each with its own parameters: :class:`rlcf.workspace.StackedWorkspace`): the
  policy runs once per step for the whole batch (:meth:`DiscretePolicy.forward_stacked`: ``torch.func.vmap`` over
  the stacked parameters, or a policy's cheaper batched form, e.g. one text pass over ``B x C`` prompts), and each
  episode receives its slice as ``step_logits``, which :meth:`DiscretePolicy.selected_logits` returns.

Batches are refused (a clear error) by online and momentum methods (the stream order is the method) and by BatchNorm
in train mode (its batch statistics would mix samples under the stacked forward). Methods whose loss needs more than
the policy's logits (``Method.batchable = False``, e.g. C-TPT's class features) and generative policies run their
samples one after the other (same results). fp16: the run's single GradScaler sees the batch's summed loss, so an
overflow in one sample skips that step for the whole batch. fp32 results equal one sample at a time within float
tolerance, bf16 ones up to bf16 rounding (a near-tie in view confidence can then select another view).
"""
from __future__ import annotations

from typing import Any, Callable, Sequence

import torch
from torch import Tensor, nn
from torch.profiler import record_function

from .losses import select_confident
from .policy import DiscretePolicy, Episode
from .reward import Reward

__all__ = ["OwnForward", "StackedForward", "check_no_train_batchnorm"]


class OwnForward:
    """One sample's episode: the policy computes what the loss asks for, when it asks."""

    def __init__(self, episodes: Sequence[Episode]) -> None:
        self.episodes = list(episodes)

    def begin_step(self, step: int) -> None:
        """Nothing to compute ahead of the losses."""

    def predict(self, predict: Callable[[Episode], Any]) -> list[Any]:
        """``predict(ep)`` of every episode (the method's prediction)."""
        return [predict(ep) for ep in self.episodes]


class StackedForward:
    """The B episodes of a batch, forwarded together with their stacked parameters ``{name: [B, ...]}``.

    At the first step the confident views of every episode are chosen (ranked with the reset-point weights, which
    every row holds then) and ``reward.prefetch`` encodes the B reward queries in one pass.
    """

    def __init__(self, policy: DiscretePolicy, episodes: Sequence[Episode], stacked: dict[str, Tensor],
                 reward: Any = None) -> None:
        self.policy, self.episodes, self.stacked, self.reward = policy, list(episodes), stacked, reward
        self.inputs = policy.batch_inputs([ep.inputs for ep in self.episodes])   # [B, V, ...]

    def _call(self, x: Tensor | None = None, query: Tensor | None = None) -> Tensor:
        """``policy(x)`` (or ``policy(query=...)``) with the stacked parameters, for the whole batch."""
        images = x is not None and x.is_floating_point()   # t2i's trainable query is text (token ids)
        with record_function("rlcf/policy (image tower)" if images else "rlcf/policy (text tower)"):
            return self.policy.forward_stacked(self.stacked, x, query=query)

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
        if isinstance(self.reward, Reward):   # the B samples' reward queries in one pass of the reward model
            with record_function("rlcf/reward"):
                self.reward.prefetch([ep.selected_inputs for ep in self.episodes])

    def _gather(self, x: Tensor) -> Tensor:
        return torch.stack([x[b, ep.selected.to(x.device)] for b, ep in enumerate(self.episodes)])

    def begin_step(self, step: int) -> None:
        """The step's ``[B, S, C]`` logits of the selected views, one slice per episode (``ep.step_logits``)."""
        p = self.policy
        if p.query_trainable:
            if self.episodes[0].selected is None:
                if self.episodes[0].selection < 1.0:   # rank the views with the (identical) reset-point weights
                    with torch.no_grad(), record_function("rlcf/policy (image tower)"):
                        flat = p.logits(p.encode_query(self.inputs.flatten(0, 1)))
                    self._select(flat.view(len(self.episodes), -1, flat.shape[-1]))
                else:
                    self._select(torch.zeros(len(self.episodes), self.inputs.shape[1], 1))
            logits = self._call(x=self._gather(self.inputs))
        else:
            q = self._frozen_queries()
            if self.episodes[0].selected is None:
                all_logits = self._call(query=q)
                self._select(all_logits.detach())
                logits = self._gather(all_logits)
            else:
                logits = self._call(query=self._gather(q))
        for ep, lg in zip(self.episodes, logits):
            ep.step_logits = lg

    @torch.no_grad()
    def predict(self, predict: Callable[[Episode], Any] | None = None) -> list[Tensor]:
        """``[C]`` float32 predictions of view 0 with each sample's adapted parameters (the policy's prediction)."""
        for ep in self.episodes:
            ep.step_logits = None
        p = self.policy
        if p.query_trainable:
            return list(self._call(x=self.inputs[:, :1])[:, 0].float())
        return list(self._call(query=self._frozen_queries()[:, :1])[:, 0].float())


def check_no_train_batchnorm(policy: nn.Module) -> None:
    bns = [n for n, m in policy.named_modules() if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.training]
    if bns:
        raise ValueError(f"batched episodes refuse BatchNorm in train mode ({bns[0]}, ...): its batch statistics "
                         "would mix the samples; use train_mode=false (BN in eval) or run.batch=1")
