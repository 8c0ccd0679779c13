"""Method registry (timm-style) and the core methods: ``zeroshot``, ``tpt``, ``rlcf``.

Each method is a :class:`~rlcf.engine.Method` subclass that writes only its loss::

    @register_method("rlcf")
    class RLCF(Method):
        def loss(self, ep, step): ...

``create_method(name, policy, reward, **overrides)`` builds one; ``list_methods()`` lists them.
"""
from __future__ import annotations

import fnmatch
from typing import Any, Callable, TypeVar

from torch import Tensor

from .baselines import compute_advantages
from .engine import AdaptConfig, Method
from .losses import marginal_entropy, reinforce_ce
from .policy import Episode
from .sampling import sample_candidates, topk_candidates

__all__ = ["register_method", "create_method", "list_methods", "get_method", "ZeroShot", "TPT", "RLCF"]

_REGISTRY: dict[str, type[Method]] = {}
M = TypeVar("M", bound=type[Method])


def register_method(name: str) -> Callable[[M], M]:
    """Class decorator adding a :class:`Method` subclass to the registry under ``name``."""

    def deco(cls: M) -> M:
        if name in _REGISTRY and _REGISTRY[name] is not cls:
            raise KeyError(f"method '{name}' is already registered")
        cls.name = name
        _REGISTRY[name] = cls
        return cls

    return deco


def list_methods(pattern: str = "*") -> list[str]:
    """Registered method names matching ``pattern`` (fnmatch), sorted."""
    return sorted(n for n in _REGISTRY if fnmatch.fnmatch(n, pattern))


def get_method(name: str) -> type[Method]:
    if name not in _REGISTRY:
        raise KeyError(f"unknown method '{name}'; available: {list_methods()}")
    return _REGISTRY[name]


def create_method(name: str, policy: Any, reward: Any = None, config: AdaptConfig | None = None,
                  **overrides: Any) -> Method:
    """Build method ``name`` around ``policy``.

    Args:
        name: a registered method (see :func:`list_methods`).
        policy: the model to adapt (trainable = parameters with ``requires_grad=True``).
        reward: reward callable for methods that need one (``rlcf``).
        config: full config; defaults to the method's ``default_config``.
        **overrides: individual :class:`AdaptConfig` fields, e.g. ``steps=1, lr=5e-3``.
    """
    cls = get_method(name)
    cfg = (config if config is not None else cls.default_config).updated(**overrides)
    return cls(policy, reward, cfg)


@register_method("zeroshot")
class ZeroShot(Method):
    """No adaptation: the policy's prediction on view 0."""

    default_config = AdaptConfig(steps=0, selection=1.0)

    def loss(self, ep: Episode, step: int) -> Tensor:  # pragma: no cover - steps is 0
        raise RuntimeError("zeroshot has no loss; use steps=0")

    def forward(self, views: Tensor) -> Tensor:
        if self.config.steps != 0:
            raise ValueError("zeroshot adapts nothing: steps must be 0")
        return super().forward(views)


@register_method("tpt")
class TPT(Method):
    """TPT: minimise the marginal entropy of the confident views (1 step, lr 5e-3 by default)."""

    default_config = AdaptConfig(steps=1, lr=5e-3, selection=0.1)

    def loss(self, ep: Episode, step: int) -> Tensor:
        return marginal_entropy(ep.selected_logits())


@register_method("rlcf")
class RLCF(Method):
    """RLCF: REINFORCE with a CLIP reward.

    Per step: logits of the confident views (selected once, at step 0) -> K candidates per view
    (top-K, or sampled) -> CLIPScore rewards from the frozen reward CLIP -> advantages (mean of
    the K by default) -> ``mean(adv * CE(logits, candidate))``. The reward model encodes the
    selected views once per sample.
    """

    needs_reward = True
    default_config = AdaptConfig(steps=3, lr=7e-3, weight_decay=5e-4, k=3, selection=0.1)

    def sample(self, logits: Tensor) -> Tensor:
        c = self.config
        if c.sampling == "topk":
            return topk_candidates(logits, c.k)
        return sample_candidates(logits, c.k, c.temperature)

    def rewards(self, ep: Episode, candidates: Tensor) -> Tensor:
        """``[S, K]`` rewards; the reward model encodes the selected views once per sample."""
        if "_reward_query_set" not in ep.cache:
            self.reward.set_query(ep.views[ep.selected])
            ep.cache["_reward_query_set"] = True
        return self.reward(candidates)

    def loss(self, ep: Episode, step: int) -> Tensor:
        c = self.config
        logits = ep.selected_logits()
        cand = self.sample(logits)
        rewards = self.rewards(ep, cand)
        ep.cache.setdefault("mean_reward", []).append(float(rewards.mean()))
        adv = compute_advantages(rewards, c.baseline, c.normalize_advantages)
        return reinforce_ce(logits, cand, adv.to(logits.device))
