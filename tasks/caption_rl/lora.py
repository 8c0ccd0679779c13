"""LoRA on the captioner's language model through ``peft``: named adapters, switching, merging, checkpoints.

Several named adapters sit on the same linear layers, e.g. ``"policy"`` (trained by the policy loss, used for
generation) and ``"value"`` (VLRM: used only to compute values, trained only by the value loss)::

    captioner.lm = add_lora(captioner.lm, ("q_proj", "v_proj"), adapters=("policy", "value"), r=8, alpha=16)
    set_active(captioner.lm, ("policy",))            # generation and policy log-probs
    with active_adapters(captioner.lm, ("policy", "value")):
        hidden = ...                                 # value forward

``add_lora`` is ``peft.get_peft_model`` + ``add_adapter`` (``LoraConfig(r, lora_alpha=alpha, target_modules,
lora_dropout=0)``: ``B`` starts at zero, so a fresh adapter leaves the LM unchanged). Switching is peft's
``set_adapter`` (several adapters at once); peft also flips ``requires_grad`` of the adapters it (de)activates, which
would freeze an adapter the optimiser still trains, so :func:`set_active` restores the flags it found.
:func:`merge_lora` is ``merge_and_unload`` of one adapter (a plain LM again: ``captioner-rl.pt`` stays a plain
captioner checkpoint).

Checkpoints store each adapter as ``peft.get_peft_model_state_dict`` gives it (:func:`lora_state_dict`).
"""
from __future__ import annotations

import contextlib
import logging
import re
from typing import Any, Iterator, Sequence

from torch import Tensor, nn

logger = logging.getLogger(__name__)

__all__ = ["add_lora", "is_lora", "adapter_names", "lora_parameters", "set_active", "active_adapters",
           "merge_lora", "strip_lora", "lora_state_dict", "load_lora_state_dict"]


def is_lora(module: nn.Module) -> bool:
    """Whether ``module`` is a ``peft`` model (adapters were added with :func:`add_lora`)."""
    from peft import PeftModel

    return isinstance(module, PeftModel)


def add_lora(module: nn.Module, targets: Sequence[str] = ("q_proj", "v_proj"), adapters: Sequence[str] = ("policy",),
             r: int = 8, alpha: float = 16.0) -> nn.Module:
    """``peft`` LoRA adapters named ``adapters`` on every linear layer named in ``targets``; the first is active.

    Returns:
        The ``peft.PeftModel`` wrapping ``module`` (assign it back, e.g. ``captioner.lm = add_lora(captioner.lm)``).
        The base weights are frozen; the adapters are trainable.
    """
    from peft import LoraConfig, get_peft_model

    if not adapters:
        raise ValueError("add_lora needs at least one adapter name")
    if is_lora(module):
        raise ValueError("this module already carries LoRA adapters")
    names = {n.rsplit(".", 1)[-1] for n, m in module.named_modules() if isinstance(m, nn.Linear)}
    if not set(targets) & names:
        raise ValueError(f"no nn.Linear named any of {list(targets)} in {type(module).__name__}")
    cfg = LoraConfig(r=int(r), lora_alpha=float(alpha), target_modules=list(targets), lora_dropout=0.0, bias="none")
    model = get_peft_model(module, cfg, adapter_name=adapters[0])
    for name in adapters[1:]:
        model.add_adapter(name, cfg)
    for name in adapters:
        for p in lora_parameters(model, name):
            p.requires_grad_(True)
    set_active(model, adapters[:1])
    logger.info("LoRA r=%d alpha=%g on %s (peft), adapters %s", r, alpha, ",".join(targets), list(adapters))
    return model


def adapter_names(module: nn.Module) -> list[str]:
    """Names of the LoRA adapters on ``module`` (``[]`` without LoRA)."""
    return list(module.peft_config) if is_lora(module) else []


def lora_parameters(module: nn.Module, adapter: str) -> list[nn.Parameter]:
    """Parameters of one adapter over every adapted layer (``[]`` when it does not exist)."""
    if adapter not in adapter_names(module):
        return []
    pat = re.compile(rf"\.lora_[AB]\.{re.escape(adapter)}\.")
    return [p for n, p in module.named_parameters() if pat.search(n)]


def set_active(module: nn.Module, names: Sequence[str]) -> None:
    """Make ``names`` the active adapters (``()`` = the base model); unknown names are ignored, and no parameter's
    ``requires_grad`` changes (peft's ``set_adapter`` would freeze the inactive adapters)."""
    if not is_lora(module):
        return
    known = adapter_names(module)
    flags = {id(p): p.requires_grad for p in module.parameters()}
    module.base_model.set_adapter([n for n in names if n in known])
    for p in module.parameters():
        p.requires_grad_(flags[id(p)])


def _active(module: nn.Module) -> list[str]:
    return list(module.base_model.active_adapters) if is_lora(module) else []


@contextlib.contextmanager
def active_adapters(module: nn.Module, names: Sequence[str]) -> Iterator[None]:
    """Temporarily switch the active adapters (restored on exit)."""
    saved = _active(module)
    set_active(module, names)
    try:
        yield
    finally:
        set_active(module, saved)


def merge_lora(module: nn.Module, adapter: str | None = "policy") -> nn.Module:
    """The base module with ``adapter`` folded into its weights (``None`` or a missing adapter: none), every adapter
    removed (peft's ``merge_and_unload``). ``module`` itself is modified: merge a copy to keep training."""
    if not is_lora(module):
        return module
    if adapter is None or adapter not in adapter_names(module):
        return module.unload()
    return module.merge_and_unload(adapter_names=[adapter])


def strip_lora(module: nn.Module) -> nn.Module:
    """The base module without any adapter (peft's ``unload``), or ``module`` itself without LoRA."""
    return module.unload() if is_lora(module) else module


def lora_state_dict(module: nn.Module) -> dict[str, dict[str, Tensor]]:
    """``{adapter: peft.get_peft_model_state_dict(module, adapter_name=adapter)}`` (CPU copies; ``{}``: no LoRA)."""
    from peft import get_peft_model_state_dict

    return {name: {k: v.detach().cpu().clone() for k, v in get_peft_model_state_dict(module, adapter_name=name).items()}
            for name in adapter_names(module)}


def load_lora_state_dict(module: nn.Module, state: dict[str, Any]) -> None:
    """Load :func:`lora_state_dict` output into a module carrying the same adapters; missing or unexpected adapters
    or keys are an error naming them."""
    from peft import get_peft_model_state_dict, set_peft_model_state_dict

    have = adapter_names(module)
    if set(have) != set(state):
        raise KeyError(f"LoRA adapters differ: the model has {sorted(have)}, the checkpoint {sorted(state)} "
                       "(set captioner.lora.* as when the checkpoint was written)")
    for name in have:
        own = get_peft_model_state_dict(module, adapter_name=name)
        if set(own) != set(state[name]):
            raise KeyError(f"LoRA keys of adapter '{name}' differ: missing {sorted(set(own) - set(state[name]))[:3]}, "
                           f"unexpected {sorted(set(state[name]) - set(own))[:3]}")
        bad = [k for k in own if own[k].shape != state[name][k].shape]
        if bad:
            raise ValueError(f"LoRA shapes of adapter '{name}' differ at {bad[0]}: model {tuple(own[bad[0]].shape)}, "
                             f"checkpoint {tuple(state[name][bad[0]].shape)} (is captioner.lora.r the one it was "
                             "trained with?)")
        set_peft_model_state_dict(module, state[name], adapter_name=name)
