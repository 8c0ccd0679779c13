"""The RL training loop shared by every recipe: batches, Adam, warm-up, clipping, logs, checkpoints, resume.

One step: ``recipe.step(batch)`` returns ``(loss, params)`` pairs; each group gets the gradient of its own loss
only, is clipped to ``clip_grad`` (VLRM: 1) on its own, and one Adam step (no weight decay) is taken with a
linear warm-up to the learning rate then a constant rate (VLRM: 20 steps to 1e-5).

Checkpoints (atomic, ``<out>/rl-latest.pt`` every ``save_every`` steps and at the end) hold the captioner's
trainable state (mapper, LM when trained, LoRA adapters), the recipe's state (value head, discriminator and its
optimiser), optimiser, scheduler, step and RNG states. Batches are a seeded permutation per epoch, so a rerun
resumes exactly where it stopped. ``captioner-rl.pt`` is a plain captioner checkpoint (LoRA merged) that
:func:`tasks.captioning.checkpoint.load_captioner` reads.

Progress: one bar over the steps with the loss, lr and ETA (rank 0), and a log line (and a ``train_log.jsonl`` row:
the statistics averaged since the previous one) at the first step of a run and every ``log_every`` steps
(``optim.log_every``).
"""
from __future__ import annotations

import copy
import json
import logging
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable

import torch

from tasks.captioning.checkpoint import captioner_state, save_atomic
from tasks.captioning.model import PrefixCaptioner
from tasks.common.progress import TrainProgress

from .a2c import assign_isolated_grads, warmup_constant_schedule
from .recipe import Batch, Recipe
from .data import RLData
from .lora import is_lora, load_lora_state_dict, lora_state_dict, merge_lora

logger = logging.getLogger(__name__)

__all__ = ["LoopConfig", "train_rl", "train_step", "make_optimizer", "trainable_state", "load_trainable_state",
           "export_captioner"]


@dataclass
class LoopConfig:
    """Optimisation and bookkeeping options.

    Attributes:
        steps: total optimiser steps; batch_size: images per step.
        lr, value_lr: Adam learning rates of the policy and value groups (``value_lr`` ``None``: ``lr``).
        warmup: linear warm-up steps; clip_grad: max gradient norm per group (``None``: no clipping).
        betas, eps, weight_decay: Adam options (no weight decay, as VLRM).
        negatives: 1-based hard-negative neighbour ranks put in each batch (the recipe's).
        caption_choice: ``"first"`` or ``"random"`` reference per image; need_captions: recipes without GT skip them.
        save_every, log_every, eval_every: in steps (``eval_every`` 0: only at the end).
        seed: batch order and caption choice; amp: ``"bf16"`` autocast on CUDA, or ``None``.
        micro_batch: images per forward / backward (gradient accumulation) for recipes with ``chunked_steps``
            (VLRM at paper scale); ``None``: the whole batch at once.
    """

    steps: int = 1000
    batch_size: int = 32
    lr: float = 1e-5
    value_lr: float | None = None
    warmup: int = 20
    clip_grad: float | None = 1.0
    betas: tuple[float, float] = (0.9, 0.999)
    eps: float = 1e-8
    weight_decay: float = 0.0
    negatives: tuple[int, ...] = ()
    caption_choice: str = "first"
    need_captions: bool = True
    save_every: int = 500
    log_every: int = 10
    eval_every: int = 0
    seed: int = 0
    amp: str | None = None
    micro_batch: int | None = None


def make_optimizer(groups: dict[str, list[torch.nn.Parameter]], cfg: LoopConfig) -> torch.optim.Adam:
    """Adam over the named groups (each keeps its name in ``param_group["name"]``)."""
    pg = [{"params": ps, "name": name, "lr": cfg.value_lr if name == "value" and cfg.value_lr else cfg.lr}
          for name, ps in groups.items() if ps]
    return torch.optim.Adam(pg, lr=cfg.lr, betas=tuple(cfg.betas), eps=cfg.eps, weight_decay=cfg.weight_decay)


def train_step(recipe: Recipe, batch: Batch, optimizer: torch.optim.Optimizer,
               scheduler: torch.optim.lr_scheduler.LRScheduler | None = None, clip_grad: float | None = 1.0,
               amp: str | None = None, micro_batch: int | None = None) -> dict[str, Any]:
    """One optimiser step of ``recipe`` on ``batch``; returns its statistics (and sample captions).

    With ``micro_batch`` and a recipe that has ``chunked_steps``, each micro-batch's losses are back-propagated as
    they come (gradients accumulate) and the statistics are averaged with the micro-batches' weights."""
    dev = recipe.captioner.device
    recipe.captioner.train()
    optimizer.zero_grad(set_to_none=True)
    stats: dict[str, Any] = {}
    samples: list[str] = []
    groups: list[list[torch.nn.Parameter]] = []
    with torch.autocast(dev.type, dtype=torch.bfloat16, enabled=amp == "bf16" and dev.type == "cuda"):
        chunked = bool(micro_batch) and hasattr(recipe, "chunked_steps")
        for res in (recipe.chunked_steps(batch, micro_batch) if chunked else [recipe.step(batch)]):
            assign_isolated_grads(res.losses)       # each group: the gradient of its own loss, accumulated
            for k, v in res.stats.items():
                stats[k] = stats.get(k, 0.0) + res.weight * v
            groups = groups or [list(params) for _, params in res.losses]
            samples = samples or res.samples
    for j, params in enumerate(groups):
        stats[f"grad_norm/{j}"] = _grad_norm(params)            # before clipping
        if clip_grad is not None and params:
            torch.nn.utils.clip_grad_norm_(params, clip_grad)
    optimizer.step()
    if scheduler is not None:
        scheduler.step()
    stats["lr"] = optimizer.param_groups[0]["lr"]
    stats["samples"] = samples
    return stats


def _grad_norm(params: list[torch.nn.Parameter]) -> float:
    return float(sum(float(p.grad.detach().float().pow(2).sum()) for p in params if p.grad is not None) ** 0.5)


def trainable_state(captioner: PrefixCaptioner) -> dict[str, Any]:
    """Mapper, LM (only when trained) and LoRA adapters (peft's per-adapter state dicts)."""
    state: dict[str, Any] = {"mapper": captioner.mapper.state_dict(), "lora": lora_state_dict(captioner.lm)}
    if captioner.train_lm:
        state["lm"] = {k: v for k, v in captioner.lm.state_dict().items() if ".lora_" not in k}
    return state


def load_trainable_state(captioner: PrefixCaptioner, state: dict[str, Any]) -> None:
    """Inverse of :func:`trainable_state`."""
    captioner.mapper.load_state_dict(state["mapper"])
    if state.get("lm") is not None:
        captioner.lm.load_state_dict(state["lm"], strict=False)
    if state.get("lora"):
        load_lora_state_dict(captioner.lm, state["lora"])
    elif is_lora(captioner.lm):
        raise KeyError("the checkpoint has no LoRA adapters but the captioner does (captioner.lora.enabled)")


def export_captioner(captioner: PrefixCaptioner, path: str | Path, lm_path: str | Path | None = None) -> None:
    """Save a plain captioner checkpoint (:func:`tasks.captioning.checkpoint.load_captioner` format). With LoRA,
    the policy adapter is merged into a copy of the LM (``merge_and_unload``), which is then stored by value."""
    if is_lora(captioner.lm):
        cap = copy.deepcopy(captioner)
        cap.lm = merge_lora(cap.lm, "policy")
        state = captioner_state(cap, None)
    else:
        state = captioner_state(captioner, lm_path)
    save_atomic(state, path)


#: statistics shown on the progress bar when a recipe reports them (the log lines have all of them)
_SHOWN = ("loss", "policy_loss", "value_loss", "reward_policy", "ret_first", "lr")


def _rng_state() -> dict:
    return {"torch": torch.get_rng_state(), "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else []}


def _order(n: int, seed: int, epoch: int) -> torch.Tensor:
    return torch.randperm(n, generator=torch.Generator().manual_seed(seed * 100_003 + epoch))


def train_rl(recipe: Recipe, data: RLData, cfg: LoopConfig, out_dir: str | Path, resume: bool = True,
             evaluate: Callable[[int], dict] | None = None, lm_path: str | Path | None = None,
             callback: Callable[[int, dict], None] | None = None) -> list[dict]:
    """Train ``recipe`` on ``data`` for ``cfg.steps`` steps (resuming from ``out_dir/rl-latest.pt``).

    Args:
        evaluate: ``evaluate(step) -> metrics`` run every ``eval_every`` steps and at the end
            (appended to ``eval_log.jsonl``).
        lm_path: the frozen LM's folder, recorded in the exported captioner.
        callback: ``callback(step, stats)`` after every step.
    Returns:
        The statistics of every step run in this call.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    groups = recipe.parameter_groups()
    opt = make_optimizer(groups, cfg)
    sched = warmup_constant_schedule(opt, cfg.warmup)
    n = len(data)
    bs = min(cfg.batch_size, n)
    per_epoch = max(1, n // bs)
    step = 0
    latest = out / "rl-latest.pt"
    if resume and latest.is_file():
        ck = torch.load(latest, map_location="cpu", weights_only=False)
        load_trainable_state(recipe.captioner, ck["captioner"])
        recipe.load_state_dict(ck["recipe"])
        opt.load_state_dict(ck["optimizer"])
        sched.load_state_dict(ck["scheduler"])
        torch.set_rng_state(ck["rng"]["torch"])
        if ck["rng"]["cuda"] and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(ck["rng"]["cuda"])
        step = int(ck["step"])
        logger.info("resumed from %s at step %d", latest, step)

    def save() -> None:
        save_atomic({"captioner": trainable_state(recipe.captioner), "recipe": recipe.state_dict(),
                     "optimizer": opt.state_dict(), "scheduler": sched.state_dict(), "step": step,
                     "rng": _rng_state(), "loop_config": asdict(cfg)}, latest)

    history: list[dict] = []
    window: list[dict] = []
    order: tuple[int, torch.Tensor | None] = (-1, None)
    t0 = time.time()
    progress = TrainProgress(cfg.steps, step, cfg.log_every, desc=f"RL {out.name}")
    with open(out / "train_log.jsonl", "a", encoding="utf-8") as log, progress:
        while step < cfg.steps:
            epoch, b = divmod(step, per_epoch)
            if order[0] != epoch:
                order = (epoch, _order(n, cfg.seed, epoch))
            idx = order[1][b * bs:(b + 1) * bs]
            batch = data.batch(idx, cfg.negatives, cfg.caption_choice, seed=cfg.seed * 7919 + step,
                               need_captions=cfg.need_captions)
            stats = train_step(recipe, batch, opt, sched, cfg.clip_grad, cfg.amp, cfg.micro_batch)
            step += 1
            samples = stats.pop("samples", [])
            history.append(stats)
            window.append(stats)
            if callback is not None:
                callback(step, stats)
            if progress.step(step, **{k: stats[k] for k in _SHOWN if k in stats}):
                keys = window[0].keys()
                row = {"step": step, "epoch": epoch, "seconds": round(time.time() - t0, 1),
                       **{k: sum(w[k] for w in window) / len(window) for k in keys}, "samples": samples[:2]}
                log.write(json.dumps(row) + "\n")
                log.flush()
                progress.log(logger, step, **{k: v for k, v in row.items() if isinstance(v, float) and k != "seconds"},
                             sample=repr(samples[0]) if samples else "-")
                window = []
            if step % cfg.save_every == 0 or step == cfg.steps:
                save()
            if evaluate is not None and ((cfg.eval_every and step % cfg.eval_every == 0) or step == cfg.steps):
                metrics = {"step": step, **evaluate(step)}
                with open(out / "eval_log.jsonl", "a", encoding="utf-8") as f:
                    f.write(json.dumps(metrics) + "\n")
    recipe.captioner.eval()
    export_captioner(recipe.captioner, out / "captioner-rl.pt", lm_path)
    return history
