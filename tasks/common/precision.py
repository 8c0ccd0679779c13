"""One precision rule for every dtype a config can set, and records that say what ran.

``adapt.amp: auto`` is the official choice: fp16 autocast on CUDA, fp32 elsewhere (:func:`rlcf.engine.resolve_precision`).
A weights dtype option (``captioner.lm_dtype``, ``vlrm.itm.dtype``) set to ``auto`` follows the same rule: float16
where the run's amp resolves to fp16 (CUDA: the official OPT setting), bfloat16 under bf16, float32 otherwise (CPU,
where half-precision matmuls are very slow: one paper-size caption TTA image took 1,564 s with an fp16 OPT-125m
against 94 s in float32). An explicit value always wins; a half dtype on CPU is said once.

:func:`component_precisions` gives what each part of a run computes in (weights dtype under the autocast that runs),
the per-component ``precisions`` field of the records.
"""
from __future__ import annotations

import logging

import torch
from torch import nn

from .logs import log_once

logger = logging.getLogger(__name__)

__all__ = ["DTYPE_NAMES", "resolve_dtype", "module_precision", "component_precisions", "reward_module"]

DTYPE_NAMES = ("auto", "float32", "float16", "bfloat16")
_SHORT = {torch.float32: "fp32", torch.float16: "fp16", torch.bfloat16: "bf16", torch.float64: "fp64"}
_BY_PRECISION = {"fp16": torch.float16, "bf16": torch.bfloat16, "fp32": torch.float32}


def resolve_dtype(value: str | None, device: torch.device | str, amp: str | None = "auto",
                  key: str = "dtype") -> torch.dtype:
    """The weights dtype of a config's dtype option ``key`` = ``value`` on ``device``.

    Args:
        value: ``auto`` (``None`` too): the precision ``amp`` resolves to on ``device`` (``adapt.amp: auto``: float16
            on CUDA, float32 on CPU); or an explicit ``float32`` / ``float16`` / ``bfloat16``, which always wins.
        amp: the run's ``adapt.amp`` (:data:`rlcf.engine.AMP_MODES`); commands without one use ``"auto"``.
    """
    from rlcf.engine import resolve_precision

    dev = torch.device(device)
    if value in (None, "auto"):
        return _BY_PRECISION[resolve_precision(amp, dev)]
    if value not in DTYPE_NAMES:
        from .config import ConfigValueError

        raise ConfigValueError(f"config '{key}' must be one of {list(DTYPE_NAMES)}, got {value!r}")
    dtype = getattr(torch, value)
    if dev.type == "cpu" and dtype != torch.float32:
        log_once(logger, logging.WARNING, "%s=%s on CPU: half-precision matmuls are very slow there (fp16 OPT-125m: "
                 "1,564 s per caption TTA image against 94 s in float32); %s=auto picks float32 on CPU", key, value,
                 key)
    return dtype


def module_precision(module: nn.Module | None, autocast: str = "fp32") -> str | None:
    """What ``module`` computes in: its floating weights' dtype, or the autocast precision when autocast is on and
    the weights are float32 (``fp32`` / ``fp16`` / ``bf16``; ``None`` for no module)."""
    if module is None:
        return None
    dtypes = {p.dtype for p in module.parameters() if p.is_floating_point()}
    if not dtypes:
        return autocast
    weights = _SHORT.get(min(dtypes, key=lambda d: torch.finfo(d).bits), str(min(dtypes, key=str)))
    return autocast if weights == "fp32" and autocast in ("fp16", "bf16") else weights


def component_precisions(autocast: str, **modules: nn.Module | None) -> dict[str, str]:
    """``{name: precision}`` of the run's parts (e.g. ``policy=clip, lm=lm, reward=reward_clip``): the record field
    ``precisions``."""
    return {name: p for name, m in modules.items() if (p := module_precision(m, autocast)) is not None}


def reward_module(reward: object) -> nn.Module | None:
    """The model(s) of a reward (:class:`rlcf.CLIPReward`, or every member of an :class:`rlcf.EnsembleReward`) as one
    module, for :func:`component_precisions`; ``None`` when there is none."""
    if reward is None:
        return None
    members = getattr(reward, "rewards", None) or [reward]
    models = [m for r in members if isinstance(m := getattr(r, "model", None), nn.Module)]
    return nn.ModuleList(models) if models else None
