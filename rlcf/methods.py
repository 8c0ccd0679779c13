"""Method registry (timm-style) and the core methods: ``zeroshot``, ``tpt``, ``rlcf``.

Each method is a :class:`~rlcf.engine.Method` subclass that writes only its loss (or, training-free,
its prediction)::

    @register_method("rlcf")
    class RLCF(Method):
        def loss(self, ep, step): ...

Other methods (C-TPT, ZERO, TDA, KD, your own) register themselves the same way, one module each
(``tasks/methods/``).

``create_method(name, policy, reward, **overrides)`` builds one; ``list_methods()`` lists them.
"""
from __future__ import annotations

import fnmatch
from typing import Any, Callable, Sequence, TypeVar

from torch import Tensor
from torch.profiler import record_function

from .baselines import compute_advantages
from .config import AdaptConfig
from .engine import Method
from .losses import marginal_entropy, reinforce_logprob
from .policy import DiscretePolicy, Episode

__all__ = ["register_method", "create_method", "list_methods", "get_method", "ZeroShot", "TPT", "RLCF"]

_REGISTRY: dict[str, type[Method]] = {}
_ALIASES: dict[str, str] = {}
M = TypeVar("M", bound=type[Method])


def register_method(name: str, aliases: Sequence[str] = ()) -> Callable[[M], M]:
    """Class decorator adding a :class:`Method` subclass to the registry under ``name`` (its :attr:`Method.name`);
    ``aliases`` are other names :func:`get_method` accepts for it."""

    def deco(cls: M) -> M:
        for n in (name, *aliases):
            if _REGISTRY.get(_ALIASES.get(n, n), cls) is not cls:
                raise KeyError(f"method '{n}' is already registered")
        cls.name = name
        _REGISTRY[name] = cls
        _ALIASES.update({a: name for a in aliases})
        return cls

    return deco


def list_methods(pattern: str = "*") -> list[str]:
    """Registered method names matching ``pattern`` (fnmatch), sorted."""
    return sorted(n for n in _REGISTRY if fnmatch.fnmatch(n, pattern))


def get_method(name: str) -> type[Method]:
    """The method registered as ``name`` (or under an alias of it)."""
    key = _ALIASES.get(name, name)
    if key not in _REGISTRY:
        raise KeyError(f"unknown method '{name}'; available: {list_methods()}")
    return _REGISTRY[key]


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
    """No adaptation: the policy's prediction (view 0)."""

    default_config = AdaptConfig(steps=0, selection=1.0)

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        if self.config.steps != 0:
            raise ValueError("zeroshot adapts nothing: steps must be 0")


@register_method("tpt")
class TPT(Method):
    """TPT: minimise the marginal entropy of the confident views (1 step, lr 5e-3 by default). Discrete
    policies only (it needs a distribution over a fixed candidate set)."""

    default_config = AdaptConfig(steps=1, lr=5e-3, selection=0.1)

    @classmethod
    def supports(cls, policy: Any) -> bool:
        return isinstance(policy, DiscretePolicy)

    def loss(self, ep: Episode, step: int) -> Tensor:
        return marginal_entropy(self.policy.selected_logits(ep))


@register_method("rlcf")
class RLCF(Method):
    """RLCF: REINFORCE with a CLIP reward, for any policy (classes, gallery items, captions).

    Per step: the policy's rollout (K candidates per query row: top-K of the confident views' logits,
    selected once at step 0, or K beam-search captions) -> rewards ``reward(query, candidates)`` from the
    frozen reward CLIP -> advantages (mean of the K by default) -> ``-mean(adv * log p(candidate))``,
    the official ``mean(adv * CE(logits, candidate))`` (captions: ``mean_k(adv_k * token loss_k)``).
    The reward encodes the query once per sample.
    """

    needs_reward = True
    default_config = AdaptConfig(steps=3, lr=7e-3, weight_decay=5e-4, k=3, selection=0.1)

    def loss(self, ep: Episode, step: int) -> Tensor:
        c = self.config
        ro = self.policy.rollout(ep, self.sampling)
        with record_function("rlcf/reward"):
            rewards = self.reward(ro.query, ro.candidates)
        ep.log("mean_reward", float(rewards.mean()))
        if not isinstance(ro.candidates, Tensor):   # generated texts: keep them for the records
            ep.log("candidates", ro.candidates)
            ep.log("rewards", rewards.tolist())
        adv = compute_advantages(rewards, c.baseline, c.normalize_advantages)
        return reinforce_logprob(ro.logprobs, adv.to(ro.logprobs.device))
