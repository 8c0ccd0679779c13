"""Ground-truth-guided CLIP RL (Chaffin, Kijak, Claveau 2024) on the prefix captioner.

Per batch of ``B`` images:

1. texts of the pool: the policy caption of each image (5-beam search with no repeated 3-grams, or a sample),
   its ground-truth caption, and optionally a greedy caption (a baseline only);
2. images of the pool: the ``B`` images plus their mined hard negatives (the 4th and 5th nearest neighbours);
3. the bidirectional contrastive reward of every policy and ground-truth pair (scale 100, clamp 16);
4. the CLIP-space discriminator scores the (image, caption) pairs, then takes one BCE step (GT real,
   policy fake); its human probability is a reward term: ``r = 0.94 * contrastive + 0.06 * D``;
5. loss = ``-mean(r_policy * meanlogp(policy))`` ``- mean(r_gt * meanlogp(GT))``: REINFORCE on the policy captions
   plus *reward-weighted teacher forcing* on the ground-truth captions, each with **its own** rewards and
   log-probabilities (the published code repeats the policy term in place of the second one; not copied).

Rewards go through :func:`rlcf.compute_advantages` (baseline ``"none"``: the paper's batch-contrastive reward
is already its own baseline) and losses through :func:`rlcf.reinforce_logprob`.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from rlcf import CLIPReward, compute_advantages, reinforce_logprob
from tasks.captioning.model import PrefixCaptioner

from .common import Batch, StepResult, detach_stats, encode_reward_texts, policy_parameters
from .contrastive import bidirectional_contrastive_reward, cosine_matrix
from .discriminator import CLIPDiscriminator, discriminator_step
from .rollout import forward_tokens, generate_rollout, rollout_from_texts, sequence_mean_logprob

logger = logging.getLogger(__name__)

__all__ = ["GTContrastiveConfig", "GTContrastiveRecipe"]


@dataclass
class GTContrastiveConfig:
    """Options of the recipe (defaults: the paper / its public code).

    Attributes:
        candidates: policy captions by ``"beam"`` (paper) or ``"sample"`` (top-k / temperature below).
        num_beams, no_repeat_ngram_size: beam search of the policy captions (5, 3).
        top_k, temperature: sampling options when ``candidates == "sample"``.
        greedy_baseline: add a greedy caption per image to the pool (a baseline, not rewarded).
        negatives: 1-based ranks of the mined neighbours used as hard-negative images (4th and 5th).
        scale, clamp: contrastive logit scale (100) and per-direction clamp (16).
        include_self, directions: contrastive variants (see :func:`bidirectional_contrastive_reward`).
        contrastive_weight, disc_weight: reward weights (0.94 / 0.06).
        discriminator: train and use the discriminator (ablation: ``False`` drops the term).
        gt_term: add the reward-weighted teacher forcing loss (ablation: ``False``).
        disc_lr, disc_hidden: discriminator optimiser (Adam 7e-5) and widths (512, 256).
        baseline: :func:`rlcf.compute_advantages` baseline over the batch (``"none"`` = paper, or ``"batch"``).
        strip_periods: remove periods before CLIP tokenisation (public code).
        max_gt_tokens: cut ground-truth captions to this many tokens (``None``: keep all).
    """

    candidates: str = "beam"
    num_beams: int = 5
    no_repeat_ngram_size: int = 3
    top_k: int = 0
    temperature: float = 1.0
    greedy_baseline: bool = True
    negatives: tuple[int, ...] = (4, 5)
    scale: float = 100.0
    clamp: float | None = 16.0
    include_self: bool = False
    directions: str = "both"
    contrastive_weight: float = 0.94
    disc_weight: float = 0.06
    discriminator: bool = True
    gt_term: bool = True
    disc_lr: float = 7e-5
    disc_hidden: tuple[int, ...] = (512, 256)
    baseline: str = "none"
    strip_periods: bool = True
    max_gt_tokens: int | None = 60


class GTContrastiveRecipe:
    """Recipe object for :mod:`tasks.caption_rl.loop` (see the module docstring).

    Args:
        captioner: the policy (its trainable parameters: mapper, LM if trained, policy adapters).
        reward: the frozen reward CLIP (ViT-B/32 in the paper) with its tokenizer.
        config: recipe options.
        embed_dim: reward-CLIP embedding size (for the discriminator; inferred from ``reward`` if ``None``).
    """

    def __init__(self, captioner: PrefixCaptioner, reward: CLIPReward, config: GTContrastiveConfig | None = None,
                 embed_dim: int | None = None) -> None:
        self.captioner, self.reward = captioner, reward
        self.cfg = config or GTContrastiveConfig()
        if self.cfg.baseline not in ("none", "batch"):
            raise ValueError(f"baseline must be 'none' or 'batch' (one caption per image), got '{self.cfg.baseline}'")
        self.disc: CLIPDiscriminator | None = None
        self.disc_opt: torch.optim.Optimizer | None = None
        if self.cfg.discriminator:
            dim = embed_dim or int(reward.encode_texts(["a"]).shape[-1])
            self.disc = CLIPDiscriminator(dim, self.cfg.disc_hidden).to(reward.device)
            self.disc_opt = torch.optim.Adam(self.disc.parameters(), lr=self.cfg.disc_lr)

    def parameter_groups(self) -> dict[str, list[nn.Parameter]]:
        return {"policy": policy_parameters(self.captioner)}

    def _policy_rollout(self, emb: torch.Tensor):
        c = self.cfg
        if c.candidates == "beam":
            return generate_rollout(self.captioner, emb, "beam", num_beams=c.num_beams,
                                    no_repeat_ngram_size=c.no_repeat_ngram_size)
        if c.candidates == "sample":
            return generate_rollout(self.captioner, emb, "sample", top_k=c.top_k, temperature=c.temperature,
                                    no_repeat_ngram_size=c.no_repeat_ngram_size)
        raise ValueError(f"candidates must be 'beam' or 'sample', got '{c.candidates}'")

    def step(self, batch: Batch) -> StepResult:
        c, cap = self.cfg, self.captioner
        if batch.captions is None:
            raise ValueError("the ground-truth-guided recipe needs one ground-truth caption per image")
        b = len(batch)
        emb = batch.prefix_feats.to(cap.device)
        policy = self._policy_rollout(emb)
        texts = policy.texts + list(batch.captions)
        if c.greedy_baseline:
            texts += generate_rollout(cap, emb, "greedy").texts
        text_feats = encode_reward_texts(self.reward, texts, c.strip_periods)
        img = batch.reward_feats.to(text_feats.device).float()
        pool = img if batch.negative_feats is None else torch.cat([img, batch.negative_feats.to(img.device).float()])
        sim = cosine_matrix(text_feats, pool)
        rows = torch.arange(2 * b, device=sim.device)
        cols = torch.arange(b, device=sim.device).repeat(2)
        r_con = bidirectional_contrastive_reward(sim, rows, cols, c.scale, c.clamp, c.include_self, c.directions)
        r_policy, r_gt = c.contrastive_weight * r_con[:b], c.contrastive_weight * r_con[b:]
        stats: dict[str, float] = {}
        if self.disc is not None:
            d = discriminator_step(self.disc, self.disc_opt, img, real_text=text_feats[b:2 * b],
                                   fake_text=text_feats[:b])
            r_policy = r_policy + c.disc_weight * d.p_fake
            r_gt = r_gt + c.disc_weight * d.p_real
            stats.update(disc_loss=d.loss, disc_acc=d.accuracy, disc_p_policy=float(d.p_fake.mean()),
                         disc_p_gt=float(d.p_real.mean()))
        adv_policy = compute_advantages(r_policy.view(1, -1), c.baseline)
        logp, _ = forward_tokens(cap, emb, policy.ids, policy.mask)
        lp_policy = sequence_mean_logprob(logp, policy.token_mask)
        loss = reinforce_logprob(lp_policy.view(1, -1), adv_policy.to(lp_policy.device))
        if c.gt_term:
            gt = rollout_from_texts(cap, batch.captions, c.max_gt_tokens)
            logp_gt, _ = forward_tokens(cap, emb, gt.ids, gt.mask)
            lp_gt = sequence_mean_logprob(logp_gt, gt.token_mask)
            adv_gt = compute_advantages(r_gt.view(1, -1), c.baseline)
            loss = loss + reinforce_logprob(lp_gt.view(1, -1), adv_gt.to(lp_gt.device))
            stats["logp_gt"] = float(lp_gt.detach().mean())
        stats.update(detach_stats(loss=loss, reward_policy=r_policy, reward_gt=r_gt, contrastive_policy=r_con[:b],
                                  contrastive_gt=r_con[b:], logp_policy=lp_policy,
                                  length=torch.tensor([float(len(t.split())) for t in policy.texts])))
        return StepResult([(loss, self.parameter_groups()["policy"])], stats, policy.texts[:4])

    def state_dict(self) -> dict[str, Any]:
        if self.disc is None:
            return {}
        return {"discriminator": self.disc.state_dict(), "disc_optimizer": self.disc_opt.state_dict()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if self.disc is not None and "discriminator" in state:
            self.disc.load_state_dict(state["discriminator"])
            self.disc_opt.load_state_dict(state["disc_optimizer"])
