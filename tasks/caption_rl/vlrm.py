"""VLRM-style A2C (Dzabraev, Kunitsyn, Ivanyuta 2024) on the prefix captioner.

Per batch (one caption per image, no ground truth needed):

1. sample a caption with top-k 6 and temperature 2 (no grad);
2. per-token returns (eq. 1, discount 1): ``R(t_k) = sim + ref - noeos - sum_{s>=k} bad(s) - sum_{s>=k} repeat(s)``
   with ``sim = clip_weight * max(cos, 0)`` from the reward CLIP (``rlcf.CLIPReward``), plus an image-text
   matching head when one is given, ``ref`` the mean token log-probability under a frozen reference LM;
3. values ``V_k`` from a value head on the LM's last hidden states, detached from the generation path (or
   computed with value-only adapters); value loss ``mean (R - V)^2`` trains the value head (and the value
   adapters) only;
4. advantages ``A = R - V`` normalised over every token of the batch; policy loss ``-1/n sum_k p_k M_k`` on the
   token probabilities (eq. 4), training the mapper (and the LM or its policy adapters) only.

Retrieval specialisation (VLRM-RS, ``retrieval=True``): no ``ref``, and ``sim += 0.3 * Phi`` (eq. 5).
Optimisation (in the loop): Adam without weight decay, 20 warm-up steps to 1e-5, gradient clipping at 1.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any, Callable

import torch
from torch import Tensor, nn

from rlcf import CLIPReward, clip_score
from tasks.captioning.model import PrefixCaptioner

from .a2c import ValueHead, normalize_advantages, probability_policy_loss, value_loss
from .common import Batch, StepResult, detach_stats, encode_reward_texts, policy_parameters
from .contrastive import normalized_contrastive_term
from .lora import active_adapters, lora_layers, lora_parameters, set_active
from .penalties import PenaltyRules, decode_pieces, vlrm_returns
from .rollout import ReferenceScorer, Rollout, forward_tokens, generate_rollout, sequence_mean_logprob

logger = logging.getLogger(__name__)

__all__ = ["VLRMConfig", "VLRMRecipe", "ItmScorer"]

#: ``itm(reward_image_feats [B, D], texts) -> [B]`` image-text matching logits (e.g. a BLIP-2 ITM head).
ItmScorer = Callable[[Tensor, list[str]], Tensor]


@dataclass
class VLRMConfig:
    """Options of the recipe (defaults: the paper where it says, else documented choices).

    Attributes:
        top_k, temperature: training-time sampling (6, 2.0).
        max_new_tokens: sampled caption length limit (``None``: the captioner's).
        clip_weight: ``sim = clip_weight * max(cos, 0)``; 10 puts CLIP's cosines (0.2-0.5) in the range of the
            BLIP-2 ITM logits the paper uses as ``sim`` (2-6, Tables 4-5).
        itm_weight: weight of the ITM head's logit when one is given.
        use_ref, ref_weight, ref_mode: the reference term (``"lm"``: the frozen LM without image, as the paper;
            ``"captioner"``: the frozen initial captioner, image-conditioned).
        penalties: bad phrases / years / repeats (see :class:`PenaltyRules.from_config`).
        noeos: penalise captions that do not end with the stop token (1).
        retrieval: VLRM-RS (no ``ref``, ``sim += contrastive_weight * Phi``).
        contrastive_weight, contrastive_temperature: eq. 5 (0.3, raw cosines).
        gamma: discount (1).
        value_width: value head width; value_adapter: compute values with the ``"value"`` LoRA adapter active.
        adv_eps: added to the std of the advantages.
    """

    top_k: int = 6
    temperature: float = 2.0
    max_new_tokens: int | None = None
    clip_weight: float = 10.0
    itm_weight: float = 1.0
    use_ref: bool = True
    ref_weight: float = 1.0
    ref_mode: str = "lm"
    penalties: dict[str, Any] = field(default_factory=dict)
    noeos: bool = True
    retrieval: bool = False
    contrastive_weight: float = 0.3
    contrastive_temperature: float = 1.0
    gamma: float = 1.0
    value_width: int = 512
    value_adapter: bool = False
    adv_eps: float = 1e-5


def _hidden_size(captioner: PrefixCaptioner) -> int:
    cfg = captioner.lm.config
    return int(getattr(cfg, "word_embed_proj_dim", None) or cfg.hidden_size)


class VLRMRecipe:
    """Recipe object for :mod:`tasks.caption_rl.loop` (see the module docstring).

    Args:
        captioner: the policy (mapper; the LM if trained; the ``"policy"`` adapter if any). If it carries a
            ``"value"`` LoRA adapter and ``value_adapter`` is set, that adapter is trained with the value head.
        reward: frozen reward CLIP (for ``sim`` and the RS term).
        config: recipe options.
        reference: the ``ref`` scorer (default: built from ``captioner`` now, i.e. the initial model).
        itm: optional image-text matching scorer added to ``sim``.
    """

    def __init__(self, captioner: PrefixCaptioner, reward: CLIPReward, config: VLRMConfig | None = None,
                 reference: ReferenceScorer | None = None, itm: ItmScorer | None = None) -> None:
        self.captioner, self.reward, self.itm = captioner, reward, itm
        self.cfg = config or VLRMConfig()
        c = self.cfg
        self.use_ref = c.use_ref and not c.retrieval
        self.reference = (reference or ReferenceScorer(captioner, c.ref_mode)) if self.use_ref else None
        self.rules = PenaltyRules.from_config(c.penalties)
        self.value_head = ValueHead(_hidden_size(captioner), c.value_width).to(captioner.device)
        has_value_lora = any("value" in m.lora_A for m in lora_layers(captioner.lm))
        if c.value_adapter and not has_value_lora:
            raise ValueError("value_adapter=True needs a 'value' LoRA adapter on the LM (lora.adapters)")
        self.value_lora = lora_parameters(captioner.lm, "value") if c.value_adapter else []
        self.policy_adapters = tuple(n for n in ("policy",) if lora_parameters(captioner.lm, n))
        set_active(captioner.lm, self.policy_adapters)   # generation and policy log-probs: policy adapter only
        frozen_value = [] if c.value_adapter else lora_parameters(captioner.lm, "value")
        for p in frozen_value:   # an unused value adapter must not be trained by the policy loss
            p.requires_grad_(False)

    def parameter_groups(self) -> dict[str, list[nn.Parameter]]:
        value = list(self.value_head.parameters()) + self.value_lora
        return {"policy": policy_parameters(self.captioner, exclude=self.value_lora), "value": value}

    # ------------------------------------------------------------------ rewards
    @torch.no_grad()
    def similarity(self, batch: Batch, texts: list[str]) -> tuple[Tensor, dict[str, float]]:
        """``[B]`` ``sim`` of eq. 1 (and eq. 5 for RS) with its parts for logging."""
        c = self.cfg
        txt = encode_reward_texts(self.reward, texts)
        img = batch.reward_feats.to(txt.device).float()
        sim = clip_score(img, txt, c.clip_weight)
        parts = {"sim_clip": float(sim.mean())}
        if self.itm is not None:
            itm = self.itm(batch.reward_feats, texts).to(sim.device).float()
            sim = sim + c.itm_weight * itm
            parts["sim_itm"] = float(itm.mean())
        if c.retrieval:
            phi = normalized_contrastive_term(img, txt, c.contrastive_temperature)
            sim = sim + c.contrastive_weight * phi
            parts["phi_abs"] = float(phi.abs().mean())
        return sim, parts

    def penalty_tensor(self, rollout: Rollout) -> tuple[Tensor, Tensor, Tensor]:
        """``(bad [B, N], repeat [B, N], noeos [B])`` aligned with ``rollout.token_mask``."""
        b, n = rollout.token_mask.shape
        bad = torch.zeros(b, n)
        rep = torch.zeros(b, n)
        for i, toks in enumerate(rollout.tokens):
            pieces = decode_pieces(self.captioner.tokenizer, toks)
            fb, fr = self.rules.penalties(pieces)
            bad[i, :len(fb)] = torch.tensor(fb, dtype=torch.float)
            rep[i, :len(fr)] = torch.tensor(fr, dtype=torch.float)
        noeos = (~rollout.ended).float().cpu() if self.cfg.noeos else torch.zeros(b)
        dev = rollout.ids.device
        return bad.to(dev), rep.to(dev), noeos.to(dev)

    @torch.no_grad()
    def returns(self, batch: Batch, rollout: Rollout) -> tuple[Tensor, dict[str, float]]:
        """``[B, N]`` per-token returns of eq. 1 and the reward parts."""
        emb = batch.prefix_feats.to(self.captioner.device)
        sim, parts = self.similarity(batch, rollout.texts)
        dev = rollout.ids.device
        ref = (self.cfg.ref_weight * self.reference(emb, rollout) if self.reference is not None
               else torch.zeros(len(rollout)))
        bad, rep, noeos = self.penalty_tensor(rollout)
        ret = vlrm_returns(sim.to(dev), ref.to(dev), noeos, bad + rep, rollout.token_mask, self.cfg.gamma)
        parts.update(sim=float(sim.mean()), ref=float(ref.float().mean()), noeos=float(noeos.mean()),
                     bad_per_caption=float(bad.sum(-1).mean()), repeat_per_caption=float(rep.sum(-1).mean()))
        return ret, parts

    # ------------------------------------------------------------------ step
    def values(self, emb: Tensor, rollout: Rollout, policy_hidden: Tensor | None) -> Tensor:
        """``[B, N]`` values: from the policy forward's hidden states (detached), or a value-adapter forward
        (detached prefix, ``"value"`` adapter active), so no value gradient reaches the policy."""
        if not self.cfg.value_adapter:
            return self.value_head(policy_hidden.detach())
        prefix = self.captioner.prefix(emb).detach()
        with active_adapters(self.captioner.lm, self.policy_adapters + ("value",)):
            _, hidden = forward_tokens(self.captioner, emb, rollout.ids, rollout.mask, hidden=True, prefix=prefix)
        return self.value_head(hidden)

    def step(self, batch: Batch) -> StepResult:
        c, cap = self.cfg, self.captioner
        emb = batch.prefix_feats.to(cap.device)
        rollout = generate_rollout(cap, emb, "sample", top_k=c.top_k, temperature=c.temperature,
                                   max_new_tokens=c.max_new_tokens)
        ret, parts = self.returns(batch, rollout)
        mask = rollout.token_mask
        logp, hidden = forward_tokens(cap, emb, rollout.ids, rollout.mask, hidden=not c.value_adapter)
        values = self.values(emb, rollout, hidden)
        adv = normalize_advantages(ret - values.detach(), mask, c.adv_eps)
        lp = probability_policy_loss(logp, adv, mask)
        lv = value_loss(values, ret, mask)
        groups = self.parameter_groups()
        lengths = mask.sum(-1).float()
        stats = detach_stats(policy_loss=lp, value_loss=lv, ret_first=ret[:, 0], logp=sequence_mean_logprob(logp, mask),
                             tokens=lengths)
        stats.update(parts)
        return StepResult([(lp, groups["policy"]), (lv, groups["value"])], stats, rollout.texts[:4])

    def state_dict(self) -> dict[str, Any]:
        return {"value_head": self.value_head.state_dict()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if "value_head" in state:
            self.value_head.load_state_dict(state["value_head"])
