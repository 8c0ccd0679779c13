"""Discriminator pre-training: the first stage of the ground-truth-guided recipe, and its own command.

The official discriminator starts from a pre-trained checkpoint (``pretrained_disc_scst_repro_27999``); ours would
otherwise start from random weights and regularise little early on. Pre-training: for ``steps`` batches of
caption rows, the ground-truth captions are real (1) and the supervised captioner's captions for the same images
(the recipe's policy decoding: 5 beams, no repeated 3-grams) are fake (0); one BCE step each
(:func:`tasks.caption_rl.discriminator.discriminator_step`, Adam at the recipe's ``disc_lr``). The captioner is
not trained here.

Its command is :mod:`tasks.caption_rl.pretrain_disc`; ``tasks.caption_rl.train`` runs this stage itself when
``gt.disc_pretrain.steps > 0`` and no pre-trained file exists, or loads ``gt.disc_checkpoint``.
"""
from __future__ import annotations

import logging

import torch

from rlcf import CLIPReward
from tasks.captioning.model import PrefixCaptioner

from .common import encode_reward_texts
from .data import RLData
from .decoding import DecodingConfig
from .discriminator import CLIPDiscriminator, DiscPretrainConfig, discriminator_step
from .rollout import generate_rollout

logger = logging.getLogger(__name__)

__all__ = ["DiscPretrainConfig", "pretrain_discriminator"]


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
