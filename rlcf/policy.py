"""The policy contract, the per-sample episode, and the discrete-policy base class.

Every policy, discrete (classes, gallery items) or generative (captions), does two things::

    ro = policy.rollout(ep, sampling)   # Rollout: K candidates per query row, their log-probs, the reward's query
    pred = policy.predict(ep)           # the final prediction: [C] logits of the clean view, or a caption

:class:`Rollout` carries ``candidates`` (``[B, K]`` indices into a cached candidate set, or ``B`` lists of
``K`` texts), ``logprobs`` (``[B, K]``, differentiable: the policy-gradient term) and ``query`` (what the
reward scores the candidates against: the ``B`` selected views, the caption, the image). A method never
needs to know which kind of policy it adapts.

:class:`DiscretePolicy` implements both from two functions, ``encode_query(x) -> [B, D]`` and
``logits(q) -> [B, C]``, plus the flag ``query_trainable`` (encoder tuning: the query side has trainable
parameters; prompt tuning: it has not, so the query features are computed once per sample). It also
owns TPT's confident-view selection (chosen once, at the first step).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol, Sequence, runtime_checkable

import torch
from torch import Tensor, nn

from .losses import select_confident
from .sampling import sample_candidates, topk_candidates

__all__ = ["Sampling", "Rollout", "Episode", "Policy", "DiscretePolicy", "Sample", "vmap_friendly"]

#: A sample: ``[V, ...]`` views (or one ``[3, H, W]`` image), or text queries (a string / list of strings).
Sample = Tensor | str | Sequence[str]


@dataclass(frozen=True)
class Sampling:
    """How candidates are drawn: ``k`` per query row, ``"topk"`` (deterministic, official) or
    ``"sample"`` (from the softmax at ``temperature``). Generative policies read ``k`` (and may read the mode)."""

    k: int = 3
    mode: str = "topk"
    temperature: float = 1.0

    def __call__(self, logits: Tensor) -> Tensor:
        """``[B, C]`` logits -> ``[B, K]`` candidate indices."""
        if self.mode == "topk":
            return topk_candidates(logits, self.k)
        return sample_candidates(logits, self.k, self.temperature)


@dataclass
class Rollout:
    """K candidates per query row (see the module docstring).

    Attributes:
        candidates: ``[B, K]`` long indices, or ``B`` lists of ``K`` strings.
        logprobs: ``[B, K]`` differentiable log-probability (score) of each candidate.
        query: the reward's query for the ``B`` rows (images ``[B, 3, H, W]`` or ``B`` strings); the
            same object at every step of an episode, so a reward may cache its features by identity.
        logits: ``[B, C]`` logits of a discrete policy (``None`` for generative ones).
    """

    candidates: Tensor | list[list[str]]
    logprobs: Tensor
    query: Any
    logits: Tensor | None = None


class Episode:
    """What one test sample keeps during its adaptation.

    Attributes:
        inputs: the sample: ``[V, ...]`` views (view 0 is the clean one) or a list of text queries.
        selection: fraction of the most confident views kept (chosen once, at the first step).
        selected: ``[S]`` indices of the kept views (``None`` until chosen).
        query_features: cached query features when the query side is frozen (policy-owned).
        step_logits: ``[S, C]`` logits of the selected views at the current step when a batched forward computed
            them ahead of the loss (:class:`rlcf.forward.StackedForward`), else ``None``.
        info: per-sample diagnostics (lists of per-step values, ...), copied into ``Method.last_info``.
    """

    def __init__(self, inputs: Tensor | list[str], selection: float = 1.0) -> None:
        self.inputs = inputs
        self.selection = selection
        self.selected: Tensor | None = None
        self.query_features: Tensor | None = None
        self.step_logits: Tensor | None = None
        self._reward_query: Any = None
        self.info: dict[str, Any] = {}

    def __len__(self) -> int:
        return len(self.inputs)

    def log(self, key: str, value: Any) -> None:
        """Append ``value`` to the diagnostic list ``info[key]`` (one entry per step)."""
        self.info.setdefault(key, []).append(value)

    def take(self, idx: Tensor) -> Tensor | list[str]:
        """The inputs at ``idx`` (tensor indexing, or a list for text inputs)."""
        if isinstance(self.inputs, Tensor):
            return self.inputs[idx.to(self.inputs.device)]
        return [self.inputs[int(i)] for i in idx]

    @property
    def selected_inputs(self) -> Tensor | list[str]:
        """The kept views (the same object all episode long: the reward's query)."""
        if self.selected is None:
            raise RuntimeError("no view selected yet")
        if self._reward_query is None:
            self._reward_query = self.take(self.selected)
        return self._reward_query


class vmap_friendly:
    """Attention through vmap-able ops: no MultiheadAttention fast path, the math SDPA kernel."""

    def __enter__(self) -> None:
        from torch.nn.attention import SDPBackend, sdpa_kernel

        self._fast = torch.backends.mha.get_fastpath_enabled()
        torch.backends.mha.set_fastpath_enabled(False)
        self._sdpa = sdpa_kernel(SDPBackend.MATH)
        self._sdpa.__enter__()

    def __exit__(self, *exc: Any) -> None:
        self._sdpa.__exit__(*exc)
        torch.backends.mha.set_fastpath_enabled(self._fast)


@runtime_checkable
class Policy(Protocol):
    """What every policy implements (see the module docstring)."""

    def rollout(self, ep: Episode, sampling: Sampling) -> Rollout: ...

    def predict(self, ep: Episode) -> Any: ...

    def parameters(self, recurse: bool = True): ...


class DiscretePolicy(nn.Module):
    """Base class of policies that score a fixed candidate set: classes, gallery items.

    Subclasses implement :meth:`encode_query` (``x [B, ...] -> [B, D]``) and :meth:`logits`
    (``q [B, D] -> [B, C]``) and set :attr:`query_trainable`.
    """

    query_trainable: bool = False
    #: B samples can be adapted at once with stacked parameters (:class:`rlcf.forward.StackedForward`)
    supports_batch: bool = True

    def encode_query(self, x: Any) -> Tensor:
        raise NotImplementedError

    def logits(self, q: Tensor, **kw: Any) -> Tensor:
        raise NotImplementedError

    def forward(self, x: Any = None, *, query: Tensor | None = None) -> Tensor:
        """``logits(encode_query(x))``, or ``logits(query)`` for precomputed query features."""
        return self.logits(self.encode_query(x) if query is None else query)

    def forward_stacked(self, params: dict[str, Tensor], x: Tensor | None = None, *,
                        query: Tensor | None = None) -> Tensor:
        """B samples' forwards at once, each with its own trainable parameters (batched episodes).

        Args:
            params: every trainable parameter's name -> its B stacked copies ``[B, ...]``.
            x: ``[B, S, ...]`` inputs (trainable query side), or ``query``: ``[B, S, D]`` query features.
        Returns:
            ``[B, S, C]`` logits; row ``b`` equals ``forward`` with ``params[.][b]`` (up to float rounding).

        The default is :func:`torch.func.functional_call` under :func:`torch.func.vmap`; a policy with a
        cheaper batched form of the same computation overrides it (prompt tuning: one text pass).
        """
        from torch.func import functional_call, vmap

        def one(p: dict[str, Tensor], xb: Tensor | None, qb: Tensor | None) -> Tensor:
            return functional_call(self, p, (xb,), {"query": qb})

        in_dims = (0, 0 if x is not None else None, 0 if query is not None else None)
        with vmap_friendly():
            return vmap(one, in_dims=in_dims)(params, x, query)

    def as_tensor(self, inputs: Tensor | list[str]) -> Tensor:
        """The episode's inputs as one tensor (stacked across a batch); text policies tokenise here."""
        if not isinstance(inputs, Tensor):
            raise TypeError(f"{type(self).__name__} takes tensor inputs, got {type(inputs).__name__}")
        return inputs

    def batch_inputs(self, inputs: list[Tensor | list[str]]) -> Tensor:
        """``[B, V, ...]``: the B episodes' inputs stacked (text policies may cut the shared padding)."""
        return torch.stack([self.as_tensor(x) for x in inputs])

    # ------------------------------------------------------------------ per-episode helpers
    def frozen_query(self, ep: Episode) -> Tensor:
        """Query features of every view, computed once per sample without grad (frozen query side)."""
        if ep.query_features is None:
            with torch.no_grad():
                ep.query_features = self.encode_query(ep.inputs).detach()
        return ep.query_features

    def _select(self, ep: Episode, logits: Tensor) -> None:
        if ep.selection >= 1.0:
            ep.selected = torch.arange(logits.shape[0], device=logits.device)
        else:
            ep.selected = select_confident(logits, ep.selection)

    def selected_logits(self, ep: Episode, **kw: Any) -> Tensor:
        """Logits ``[S, C]`` (with grad) of the confident views; they are chosen on the first call.

        Frozen query: all-view logits are computed once with grad and sliced (one text pass).
        Trainable query: views are ranked by a no-grad forward, then only the ``S`` selected views are
        forwarded with grad (identical values for models without batch statistics). ``kw`` goes to
        :meth:`logits` (e.g. precomputed class features). In a batch: ``ep.step_logits``, the episode's slice of
        the step's batched forward (:class:`rlcf.forward.StackedForward`).
        """
        if ep.step_logits is not None:
            return ep.step_logits
        if ep.selected is None:
            if self.query_trainable and ep.selection >= 1.0:   # nothing to rank: every view is kept
                ep.selected = torch.arange(len(ep), device=self._device())
                return self.logits(self.encode_query(ep.inputs), **kw)
            if self.query_trainable:
                with torch.no_grad():
                    self._select(ep, self.logits(self.encode_query(ep.inputs), **kw))
                return self.logits(self.encode_query(ep.selected_inputs), **kw)
            all_logits = self.logits(self.frozen_query(ep), **kw)
            self._select(ep, all_logits)
            return all_logits[ep.selected]
        if self.query_trainable:
            return self.logits(self.encode_query(ep.selected_inputs), **kw)
        return self.logits(self.frozen_query(ep)[ep.selected], **kw)

    def all_logits(self, ep: Episode) -> Tensor:
        """Logits ``[V, C]`` of every view."""
        q = self.encode_query(ep.inputs) if self.query_trainable else self.frozen_query(ep)
        return self.logits(q)

    def _device(self) -> torch.device:
        for p in self.parameters():
            return p.device
        return torch.device("cpu")

    # ------------------------------------------------------------------ the contract
    def rollout(self, ep: Episode, sampling: Sampling) -> Rollout:
        """Candidates from the selected views' logits; ``logprobs = log_softmax(logits)[candidates]``."""
        logits = self.selected_logits(ep)
        cand = sampling(logits)
        logp = torch.log_softmax(logits.float(), dim=-1).gather(-1, cand)
        return Rollout(cand, logp, ep.selected_inputs, logits)

    @torch.no_grad()
    def predict(self, ep: Episode) -> Tensor:
        """Fresh no-grad forward of the clean view 0: logits ``[C]`` (float32)."""
        q = self.encode_query(ep.take(torch.tensor([0]))) if self.query_trainable else self.frozen_query(ep)[:1]
        return self.logits(q)[0].float()
