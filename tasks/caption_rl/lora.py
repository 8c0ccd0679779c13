"""Low-rank adapters (LoRA) on the captioner's language model, hand-written (``peft`` is not a dependency).

Several named adapters can sit on the same linear layers, e.g. ``"policy"`` (trained by the policy loss, used
for generation) and ``"value"`` (VLRM: used only to compute values, trained only by the value loss). Which
adapters act is chosen per forward with :func:`active_adapters`::

    add_lora(captioner.lm, ("q_proj", "v_proj"), adapters=("policy", "value"), r=8, alpha=16)
    set_active(captioner.lm, ("policy",))            # generation and policy log-probs
    with active_adapters(captioner.lm, ("policy", "value")):
        hidden = ...                                 # value forward

``B`` starts at zero, so a fresh adapter leaves the LM unchanged. :func:`merge_lora` folds an adapter into the
base weights and removes the wrappers (exporting a plain captioner checkpoint).
"""
from __future__ import annotations

import contextlib
import logging
import math
from typing import Iterator, Sequence

import torch
from torch import Tensor, nn

logger = logging.getLogger(__name__)

__all__ = ["LoRALinear", "add_lora", "lora_layers", "lora_parameters", "set_active", "active_adapters",
           "merge_lora", "lora_state_dict", "load_lora_state_dict"]


class LoRALinear(nn.Module):
    """``y = base(x) + sum_{a in active} (alpha / r) * B_a(A_a(x))`` with a frozen ``base``.

    Args:
        base: the wrapped linear layer (its parameters keep their ``requires_grad``).
        adapters: adapter names.
        r: rank; alpha: scale numerator.
    """

    def __init__(self, base: nn.Linear, adapters: Sequence[str], r: int = 8, alpha: float = 16.0) -> None:
        super().__init__()
        self.base = base
        self.r, self.scaling = r, alpha / r
        self.lora_A = nn.ModuleDict()
        self.lora_B = nn.ModuleDict()
        for name in adapters:
            a = nn.Linear(base.in_features, r, bias=False)
            nn.init.kaiming_uniform_(a.weight, a=math.sqrt(5))
            b = nn.Linear(r, base.out_features, bias=False)
            nn.init.zeros_(b.weight)
            self.lora_A[name], self.lora_B[name] = a.to(base.weight.device), b.to(base.weight.device)
        self.active: tuple[str, ...] = tuple(adapters[:1])

    def forward(self, x: Tensor) -> Tensor:
        y = self.base(x)
        for name in self.active:
            a, b = self.lora_A[name], self.lora_B[name]
            y = y + self.scaling * b(a(x.to(a.weight.dtype))).to(y.dtype)
        return y


def add_lora(module: nn.Module, targets: Sequence[str] = ("q_proj", "v_proj"), adapters: Sequence[str] = ("policy",),
             r: int = 8, alpha: float = 16.0) -> list[LoRALinear]:
    """Wrap every ``nn.Linear`` whose attribute name is in ``targets``; the first adapter is active.

    Returns:
        The wrappers (raises ``ValueError`` if no layer matched).
    """
    wrapped: list[LoRALinear] = []
    for parent in list(module.modules()):
        for name, child in list(parent.named_children()):
            if name in targets and isinstance(child, nn.Linear):
                w = LoRALinear(child, adapters, r, alpha)
                setattr(parent, name, w)
                wrapped.append(w)
    if not wrapped:
        raise ValueError(f"no nn.Linear named any of {list(targets)} in {type(module).__name__}")
    logger.info("LoRA r=%d on %d layers (%s), adapters %s", r, len(wrapped), ",".join(targets), list(adapters))
    return wrapped


def lora_layers(module: nn.Module) -> list[LoRALinear]:
    return [m for m in module.modules() if isinstance(m, LoRALinear)]


def lora_parameters(module: nn.Module, adapter: str) -> list[nn.Parameter]:
    """Parameters of one adapter over every wrapped layer."""
    out: list[nn.Parameter] = []
    for m in lora_layers(module):
        if adapter in m.lora_A:
            out += list(m.lora_A[adapter].parameters()) + list(m.lora_B[adapter].parameters())
    return out


def set_active(module: nn.Module, names: Sequence[str]) -> None:
    """Make ``names`` the active adapters of every wrapped layer (``()`` = the base model)."""
    for m in lora_layers(module):
        m.active = tuple(n for n in names if n in m.lora_A)


@contextlib.contextmanager
def active_adapters(module: nn.Module, names: Sequence[str]) -> Iterator[None]:
    """Temporarily switch the active adapters (restored on exit)."""
    layers = lora_layers(module)
    saved = [m.active for m in layers]
    set_active(module, names)
    try:
        yield
    finally:
        for m, a in zip(layers, saved):
            m.active = a


@torch.no_grad()
def merge_lora(module: nn.Module, adapter: str | None = "policy") -> None:
    """Fold ``adapter`` (``None``: none) into the base weights and replace every wrapper by its base layer."""
    for parent in list(module.modules()):
        for name, child in list(parent.named_children()):
            if isinstance(child, LoRALinear):
                base = child.base
                if adapter is not None and adapter in child.lora_A:
                    delta = child.lora_B[adapter].weight.float() @ child.lora_A[adapter].weight.float()
                    base.weight.add_((child.scaling * delta).to(base.weight.dtype))
                setattr(parent, name, base)


def lora_state_dict(module: nn.Module) -> dict[str, Tensor]:
    """The adapter weights only (``lora_A`` / ``lora_B`` entries of ``module.state_dict()``)."""
    return {k: v.detach().cpu() for k, v in module.state_dict().items() if ".lora_A." in k or ".lora_B." in k}


def load_lora_state_dict(module: nn.Module, state: dict[str, Tensor]) -> None:
    """Load :func:`lora_state_dict` output into a module wrapped the same way (missing keys are an error)."""
    own = {k for k in module.state_dict() if ".lora_A." in k or ".lora_B." in k}
    if own != set(state):
        raise KeyError(f"LoRA keys differ: missing {sorted(own - set(state))[:3]}, "
                       f"unexpected {sorted(set(state) - own)[:3]}")
    module.load_state_dict(state, strict=False)
