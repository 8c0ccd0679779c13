"""Discriminator pre-training: the first stage of the ground-truth-guided recipe, and its command.

The official discriminator starts from a pre-trained checkpoint (``pretrained_disc_scst_repro_27999``); ours would
otherwise start from random weights and regularise little early on. Pre-training: for ``steps`` batches of
caption rows, the ground-truth captions are real (1) and the supervised captioner's captions for the same images
(the recipe's policy decoding: 5 beams, no repeated 3-grams) are fake (0); one BCE step each
(:func:`tasks.caption_rl.gt.discriminator.discriminator_step`, Adam at the recipe's ``disc_lr``). The captioner is
not trained here.

``python -m tasks.caption_rl.gt.pretrain_disc --config configs/caption_rl/gt_coco.yaml [key.sub=value ...]`` runs
the stage alone and writes ``gt.disc_pretrain.out`` (default ``<run.out_dir>/discriminator-pretrained.pt``);
``tasks.caption_rl.train`` runs it itself when ``gt.disc_pretrain.steps > 0`` and no pre-trained file exists, or
loads ``gt.disc_checkpoint`` (:func:`pretrained_discriminator`).
"""
from __future__ import annotations

import argparse
import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import torch

from rlcf import CLIPReward
from tasks.captioning.model import PrefixCaptioner

from ..data import RLData
from ..decoding import DecodingConfig, resolve_decoding
from ..recipe import Setup, dataclass_from, encode_reward_texts
from ..rollout import generate_rollout
from .discriminator import CLIPDiscriminator, discriminator_step, load_discriminator, save_discriminator

logger = logging.getLogger(__name__)

__all__ = ["DiscPretrainConfig", "pretrain_discriminator", "run_disc_pretraining", "pretrained_discriminator", "main"]


@dataclass
class DiscPretrainConfig:
    """Options of the pre-training stage.

    Attributes:
        steps: batches (0: no pre-training); batch_size: caption rows per batch.
        lr: Adam learning rate (``None``: the recipe's ``disc_lr``); seed: row order.
        out: where the discriminator is written (``None``: ``<run.out_dir>/discriminator-pretrained.pt``).
    """

    steps: int = 0
    batch_size: int = 64
    lr: float | None = None
    seed: int = 0
    out: str | None = None


def pretrain_discriminator(disc: CLIPDiscriminator, captioner: PrefixCaptioner, reward: CLIPReward, data: RLData,
                           cfg: DiscPretrainConfig, decoding: DecodingConfig, lr: float,
                           strip_periods: bool = True) -> list[dict[str, float]]:
    """Train ``disc`` in place on GT (real) vs ``captioner`` (fake) captions of ``data``'s rows.

    Returns:
        Per step ``{"loss", "accuracy", "p_real", "p_fake"}`` (scores before that step's update).
    """
    if cfg.steps < 0 or cfg.batch_size < 1:
        raise ValueError(f"disc_pretrain.steps must be >= 0 and batch_size >= 1, got {cfg.steps}, {cfg.batch_size}")
    opt = torch.optim.Adam(disc.parameters(), lr=cfg.lr or lr)
    gen = torch.Generator().manual_seed(cfg.seed)
    bs = min(cfg.batch_size, len(data))
    per_epoch = max(1, len(data) // bs)
    order = torch.randperm(len(data), generator=gen)
    history = []
    was_training = captioner.training
    captioner.eval()
    try:
        for step in range(cfg.steps):
            b = step % per_epoch
            if step and b == 0:
                order = torch.randperm(len(data), generator=gen)
            batch = data.batch(order[b * bs:(b + 1) * bs])
            fake = generate_rollout(captioner, batch.prefix_feats.to(captioner.device), decoding).texts
            feats = encode_reward_texts(reward, fake + list(batch.captions), strip_periods)
            img = batch.reward_feats.to(feats.device)
            st = discriminator_step(disc, opt, img, real_text=feats[bs:], fake_text=feats[:bs])
            history.append({"loss": st.loss, "accuracy": st.accuracy, "p_real": float(st.p_real.mean()),
                            "p_fake": float(st.p_fake.mean())})
            if (step + 1) % 50 == 0 or step + 1 == cfg.steps:
                logger.info("discriminator pre-training %d/%d: %s", step + 1, cfg.steps,
                            {k: round(v, 4) for k, v in history[-1].items()})
    finally:
        captioner.train(was_training)
    return history


def _disc_path(cfg: dict) -> Path:
    return Path(cfg["gt"]["disc_pretrain"]["out"] or Path(cfg["run"]["out_dir"]) / "discriminator-pretrained.pt")


def run_disc_pretraining(s: Setup, cfg: dict, force: bool = False) -> tuple[Path, list[dict]]:
    """Pre-train the discriminator on ``s`` (GT vs the captioner's policy-decoded captions) and save it; an existing
    file is reused unless ``force``. Returns ``(path, per-step statistics)``."""
    path = _disc_path(cfg)
    if path.is_file() and not force:
        logger.info("reusing the pre-trained discriminator %s", path)
        return path, []
    g = cfg["gt"]
    pcfg = dataclass_from(DiscPretrainConfig, g["disc_pretrain"])
    dim = int(s.reward.encode_texts(["a"]).shape[-1])
    disc = CLIPDiscriminator(dim, tuple(g["disc_hidden"])).to(s.reward.device)
    policy = resolve_decoding(g["decoding"]["policy"], "chaffin_policy", "gt.decoding.policy")
    data = s.data if s.data.rows is not None else s.data.caption_rows()
    history = pretrain_discriminator(disc, s.captioner, s.reward, data, pcfg, policy, float(g["disc_lr"]),
                                     bool(g["strip_periods"]))
    save_discriminator(disc, path, {"steps": pcfg.steps, "batch_size": pcfg.batch_size,
                                    "final": history[-1] if history else None})
    return path, history


def pretrained_discriminator(s: Setup, cfg: dict) -> CLIPDiscriminator | None:
    """The recipe's starting discriminator: ``gt.disc_checkpoint``, else the pre-training stage when
    ``gt.disc_pretrain.steps > 0``, else ``None`` (random initialisation)."""
    g = cfg["gt"]
    dim = int(s.reward.encode_texts(["a"]).shape[-1])
    if g["disc_checkpoint"]:
        return load_discriminator(g["disc_checkpoint"], dim, tuple(g["disc_hidden"]), s.reward.device)
    if int(g["disc_pretrain"]["steps"]) > 0:
        path, _ = run_disc_pretraining(s, cfg)
        return load_discriminator(path, dim, tuple(g["disc_hidden"]), s.reward.device)
    return None


def main(argv: Sequence[str] | None = None) -> dict:
    """CLI (see the module docstring): pre-train and save the discriminator of a ``gt_contrastive`` config."""
    from ...common.cli import setup_logging
    from ..config import load_rl_config
    from ..train import setup

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--config", help="YAML file of deltas over the defaults (configs/caption_rl/gt_coco.yaml)")
    ap.add_argument("overrides", nargs="*", help="key.sub=value overrides, e.g. gt.disc_pretrain.steps=500")
    args = ap.parse_args(argv)
    setup_logging()   # project INFO, third-party WARNING
    cfg = load_rl_config(args.config, args.overrides, recipe="gt_contrastive")
    if int(cfg["gt"]["disc_pretrain"]["steps"]) <= 0:
        raise ValueError("gt.disc_pretrain.steps must be > 0 for pre-training (e.g. gt.disc_pretrain.steps=2000)")
    s = setup(cfg, with_eval=False, with_recipe=False)
    path, history = run_disc_pretraining(s, cfg, force=True)
    out = {"path": str(path), "steps": len(history), "final": history[-1] if history else None}
    logger.info("discriminator pre-training done: %s", json.dumps(out))
    return out


if __name__ == "__main__":
    from tasks.common.cli import run_main

    run_main(main)
