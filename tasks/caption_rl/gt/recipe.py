"""Ground-truth-guided CLIP RL (Chaffin, Kijak, Claveau 2024) on the prefix captioner.

Per batch of ``B`` caption rows (one ground-truth caption each):

1. texts of the pool: the policy caption of each image (``policy_decoding``: 5-beam search with no repeated
   3-grams), its ground-truth caption, and optionally a greedy caption (``baseline_decoding``, a baseline only);
2. images of the pool: the ``B`` images plus their mined hard negatives (the 4th and 5th nearest neighbours);
3. the bidirectional contrastive reward of every policy and ground-truth pair (scale 100, clamp 16);
4. the CLIP-space discriminator (pre-trained: :mod:`.pretrain_disc`) scores the (image, caption) pairs, then takes
   one BCE step (GT real, policy fake); its human probability is a reward term: ``r = 0.94 * contrastive + 0.06 * D``;
5. loss = ``-mean(r_policy * meanlogp(policy))`` ``- mean(r_gt * meanlogp(GT))``: REINFORCE on the policy captions
   plus *reward-weighted teacher forcing* on the ground-truth captions, each with **its own** rewards and
   log-probabilities (``gt_term="paper"``).

``gt_term``: the published code (every commit) computes ``logprob_gt`` / ``rewards_gt`` but adds the policy term a
second time where the GT term belongs, so it trains with no GT term: ``"none"`` drops the term (the public code's
behaviour up to a factor 2 on the loss, which Adam ignores but gradient clipping does not), ``"public"`` repeats
the policy term exactly as that code does. Published numbers may come from the run without the GT term.

Rewards go through :func:`rlcf.compute_advantages` (baseline ``"none"``: the paper's batch-contrastive reward
is already its own baseline) and losses through :func:`rlcf.reinforce_logprob`.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from rlcf import CLIPReward, compute_advantages, reinforce_logprob
from tasks.captioning.model import PrefixCaptioner

from ..contrastive import bidirectional_contrastive_reward, cosine_matrix
from ..decoding import DecodingConfig, resolve_decoding
from ..recipe import (Batch, Needs, Recipe, Setup, StepResult, dataclass_from, decoding_section, detach_stats,
                      encode_reward_texts, plain_section, policy_parameters, register_recipe)
from ..rollout import forward_tokens, generate_rollout, rollout_from_texts, sequence_mean_logprob
from .discriminator import CLIPDiscriminator, discriminator_step
from .pretrain_disc import DiscPretrainConfig, pretrained_discriminator

logger = logging.getLogger(__name__)

__all__ = ["GTContrastiveConfig", "GTContrastiveRecipe"]


GT_TERMS = ("paper", "none", "public")


@dataclass
class GTContrastiveConfig:
    """Options of the recipe (defaults: the paper / its public code).

    Attributes:
        policy_decoding: how the policy captions are generated (preset ``chaffin_policy``: 5 beams, no repeated
            3-grams, 50 new tokens, bad-words filter).
        baseline_decoding: the greedy baseline caption (preset ``chaffin_baseline``: greedy, 50 new tokens, no n-gram
            blocking, as the public code).
        greedy_baseline: add a greedy caption per image to the pool (a baseline, not rewarded).
        negatives: 1-based ranks of the mined neighbours used as hard-negative images (4th and 5th).
        scale, clamp: contrastive logit scale (100) and per-direction clamp (16).
        include_self, directions: contrastive variants (see :func:`bidirectional_contrastive_reward`).
        contrastive_weight, disc_weight: reward weights (0.94 / 0.06).
        discriminator: train and use the discriminator (ablation: ``False`` drops the term).
        gt_term: ``"paper"`` (reward-weighted teacher forcing on the GT captions), ``"none"`` or ``"public"`` (the
            published code: the policy term twice), see the module docstring.
        disc_lr, disc_hidden: discriminator optimiser (Adam 7e-5) and widths (512, 256).
        baseline: :func:`rlcf.compute_advantages` baseline over the batch (``"none"`` = paper, or ``"batch"``).
        strip_periods: remove periods before CLIP tokenisation (public code).
        max_gt_tokens: cut ground-truth captions to this many tokens (``None``: keep all).
    """

    policy_decoding: DecodingConfig = field(default_factory=lambda: resolve_decoding("chaffin_policy"))
    baseline_decoding: DecodingConfig = field(default_factory=lambda: resolve_decoding("chaffin_baseline"))
    greedy_baseline: bool = True
    negatives: tuple[int, ...] = (4, 5)
    scale: float = 100.0
    clamp: float | None = 16.0
    include_self: bool = False
    directions: str = "both"
    contrastive_weight: float = 0.94
    disc_weight: float = 0.06
    discriminator: bool = True
    gt_term: str = "paper"
    disc_lr: float = 7e-5
    disc_hidden: tuple[int, ...] = (512, 256)
    baseline: str = "none"
    strip_periods: bool = True
    max_gt_tokens: int | None = 60

    def __post_init__(self) -> None:
        if self.gt_term not in GT_TERMS:
            raise ValueError(f"gt_term must be one of {list(GT_TERMS)}, got {self.gt_term!r}")
        if self.baseline not in ("none", "batch"):
            raise ValueError(f"baseline must be 'none' or 'batch' (one caption per image), got '{self.baseline}'")
        self.policy_decoding = resolve_decoding(self.policy_decoding, "chaffin_policy", "gt.decoding.policy")
        self.baseline_decoding = resolve_decoding(self.baseline_decoding, "chaffin_baseline", "gt.decoding.baseline")


@register_recipe("gt_contrastive")
class GTContrastiveRecipe(Recipe):
    """Recipe object for :mod:`tasks.caption_rl.loop` (see the module docstring); config section ``gt``.

    Args:
        captioner: the policy (its trainable parameters: mapper, LM if trained, policy adapters).
        reward: the frozen reward CLIP (ViT-B/32 in the paper) with its tokenizer.
        config: recipe options.
        embed_dim: reward-CLIP embedding size (for the discriminator; inferred from ``reward`` if ``None``).
    """

    section = "gt"
    option_docs = {"": GTContrastiveConfig, "disc_pretrain": DiscPretrainConfig}
    needs_captions = True
    ablations = {"no_disc": ["gt.discriminator=false"], "no_gt": ["gt.gt_term=none"]}
    world_overrides = ["eval.preset=chaffin"]

    @classmethod
    def defaults(cls) -> dict[str, Any]:
        return {**plain_section(GTContrastiveConfig(), drop=("policy_decoding", "baseline_decoding")),
                "decoding": {"policy": decoding_section("chaffin_policy"),
                             "baseline": decoding_section("chaffin_baseline")},
                "disc_pretrain": plain_section(DiscPretrainConfig()), "disc_checkpoint": None}

    @classmethod
    def needs(cls, cfg: dict, device: torch.device) -> Needs:
        """Mined hard-negative neighbours (``data.neighbours``), one row per caption with ``data.rows=caption``."""
        return Needs(neighbours=int(cfg["data"]["neighbours"]), caption_rows=cfg["data"]["rows"] == "caption")

    @classmethod
    def negatives(cls, cfg: dict) -> tuple[int, ...]:
        return tuple(cfg["gt"]["negatives"])

    @classmethod
    def options(cls, cfg: dict) -> GTContrastiveConfig:
        """The ``gt`` section as the recipe's options."""
        g = cfg["gt"]
        return dataclass_from(GTContrastiveConfig, g, policy_decoding=g["decoding"]["policy"],
                              baseline_decoding=g["decoding"]["baseline"])

    @classmethod
    def from_config(cls, cfg: dict, setup: Setup) -> GTContrastiveRecipe:
        """The recipe of :meth:`options`; the discriminator starts from
        :func:`.pretrain_disc.pretrained_discriminator`."""
        disc = pretrained_discriminator(setup, cfg) if cfg["gt"]["discriminator"] else None
        return cls(setup.captioner, setup.reward, cls.options(cfg), discriminator=disc)

    def __init__(self, captioner: PrefixCaptioner, reward: CLIPReward, config: GTContrastiveConfig | None = None,
                 embed_dim: int | None = None, discriminator: CLIPDiscriminator | None = None) -> None:
        self.captioner, self.reward = captioner, reward
        self.cfg = config or GTContrastiveConfig()
        self.disc: CLIPDiscriminator | None = None
        self.disc_opt: torch.optim.Optimizer | None = None
        if self.cfg.discriminator:
            dim = embed_dim or int(reward.encode_texts(["a"]).shape[-1])
            if discriminator is not None and (discriminator.dim != dim
                                              or discriminator.hidden != tuple(self.cfg.disc_hidden)):
                raise ValueError(f"the given discriminator is for size {discriminator.dim}, widths "
                                 f"{list(discriminator.hidden)}; the recipe needs {dim}, {list(self.cfg.disc_hidden)}")
            self.disc = (discriminator or CLIPDiscriminator(dim, self.cfg.disc_hidden)).to(reward.device)
            self.disc_opt = torch.optim.Adam(self.disc.parameters(), lr=self.cfg.disc_lr)

    def parameter_groups(self) -> dict[str, list[nn.Parameter]]:
        return {"policy": policy_parameters(self.captioner)}

    def step(self, batch: Batch) -> StepResult:
        c, cap = self.cfg, self.captioner
        if batch.captions is None:
            raise ValueError("the ground-truth-guided recipe needs one ground-truth caption per image")
        b = len(batch)
        emb = batch.prefix_feats.to(cap.device)
        policy = generate_rollout(cap, emb, c.policy_decoding)
        texts = policy.texts + list(batch.captions)
        if c.greedy_baseline:
            texts += generate_rollout(cap, emb, c.baseline_decoding).texts
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
        if c.gt_term == "public":   # official quirk: "WTF loss" = the policy term again (logprob_gt unused)
            loss = loss + reinforce_logprob(lp_policy.view(1, -1), adv_policy.to(lp_policy.device))
        elif c.gt_term == "paper":
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
