"""VLRM-style A2C (Dzabraev, Kunitsyn, Ivanyuta 2024) on the prefix captioner.

Per batch (one caption per image, no ground truth needed):

1. sample a caption (``rollout_decoding``, preset ``vlrm_rollout``: top-k 6, temperature 2; no grad);
2. per-token returns (eq. 1, discount 1): ``R(t_k) = sim + ref - noeos - sum_{s>=k} bad(s) - sum_{s>=k} repeat(s)``
   with ``sim`` from a :class:`~tasks.caption_rl.similarity.Similarity`: the paper's BLIP-2 ITM positive logit
   (``sim="itm"``) or ``clip_weight * max(cos, 0)`` of the reward CLIP (``sim="clip"``, calibrated by
   :mod:`.calibrate`); ``ref`` the mean token log-probability under a frozen reference LM;
3. values ``V_k`` from a value head on the LM's last hidden states, detached from the generation path (or
   computed with value-only adapters); value loss ``mean (R - V)^2`` trains the value head (and the value
   adapters) only;
4. advantages ``A = R - V`` normalised over every token of the batch; policy loss ``-1/n sum_k p_k M_k`` on the
   token probabilities (eq. 4), training the mapper (and the LM or its policy adapters) only.

Retrieval specialisation (VLRM-RS, ``retrieval=True``): no ``ref``, and ``sim += 0.3 * Phi`` (eq. 5) where ``Phi``
comes from its own CLIP (``phi``: OpenCLIP ViT-bigG-14 in the paper; default the reward CLIP).
Optimisation (in the loop): Adam without weight decay, 20 warm-up steps to 1e-5, gradient clipping at 1.

Paper scale (4096 captions per step) does not fit one forward: :meth:`VLRMRecipe.chunked_steps` splits the batch
into micro-batches (``optim.micro_batch``), with the advantages still normalised over the *whole* batch (a
gradient-free first pass gives their mean and std) and each chunk's losses weighted by its share of the batch, so
the accumulated gradient equals the full-batch one.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

import torch
from torch import Tensor, nn

import rlcf
from rlcf import CLIPReward
from tasks.captioning.model import PrefixCaptioner
from tasks.common.data import require_path
from tasks.common.precision import resolve_dtype

from ..a2c import ValueHead, masked_mean_per_row, normalize_advantages, probability_policy_loss, value_loss
from ..contrastive import normalized_contrastive_term
from ..decoding import DecodingConfig, resolve_decoding
from ..lora import active_adapters, adapter_names, lora_parameters, set_active
from ..presets import load_named_clip
from ..recipe import (Batch, Needs, Recipe, Setup, StepResult, dataclass_from, decoding_section, detach_stats,
                      encode_reward_texts, plain_section, policy_parameters, register_recipe)
from ..rollout import ReferenceScorer, Rollout, forward_tokens, generate_rollout, sequence_mean_logprob
from .penalties import PenaltyRules, decode_pieces, vlrm_returns
from .similarity import ITM_HINT, CLIPSimilarity, ITMSimilarity, Similarity, load_blip2_itm

logger = logging.getLogger(__name__)

__all__ = ["VLRMConfig", "VLRMRecipe", "VLRMRetrievalRecipe", "SIMS", "WORLD_CLIP_WEIGHT"]

SIMS = ("clip", "itm")


@dataclass
class VLRMConfig:
    """Options of the recipe (defaults: the paper where it says, else documented choices).

    Attributes:
        rollout_decoding: training-time sampling (preset ``vlrm_rollout``: top-k 6, temperature 2).
        sim: ``"itm"`` (the paper: an ITM head's positive logit, given to the recipe as ``similarity``) or
            ``"clip"`` (``clip_weight * max(cos, 0)`` of the reward CLIP).
        clip_weight: scale of the CLIP ``sim``; calibrate it to the ITM spread with :mod:`.calibrate` (the world's
            measured value is in its config; 44 makes the CLIP column of the paper's Tables 4-5 spread as its ITM).
        itm_weight: scale of the ITM logit (1, the paper).
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

    rollout_decoding: DecodingConfig = field(default_factory=lambda: resolve_decoding("vlrm_rollout"))
    sim: str = "clip"
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

    def __post_init__(self) -> None:
        if self.sim not in SIMS:
            raise ValueError(f"vlrm.sim must be one of {list(SIMS)}, got {self.sim!r}")
        self.rollout_decoding = resolve_decoding(self.rollout_decoding, "vlrm_rollout", "vlrm.decoding.rollout")


def _hidden_size(captioner: PrefixCaptioner) -> int:
    cfg = captioner.lm.config
    return int(getattr(cfg, "word_embed_proj_dim", None) or cfg.hidden_size)


#: ``clip_weight`` of the world's CLIP ``sim``: the paper's ITM spread over the world reward CLIP's, as
#: ``python -m tasks.caption_rl.vlrm.calibrate --images 256 --k 8`` measures it (the caption_rl README gives the
#: measurement), rounded.
WORLD_CLIP_WEIGHT = 5.7


@register_recipe("vlrm")
class VLRMRecipe(Recipe):
    """Recipe object for :mod:`tasks.caption_rl.loop` (see the module docstring); config section ``vlrm``.

    Args:
        captioner: the policy (mapper; the LM if trained; the ``"policy"`` adapter if any). If it carries a
            ``"value"`` LoRA adapter and ``value_adapter`` is set, that adapter is trained with the value head.
        reward: frozen reward CLIP (the CLIP ``sim``, and ``Phi`` unless ``phi`` is given); may be ``None`` with
            ``similarity`` given and no retrieval term.
        config: recipe options.
        reference: the ``ref`` scorer (default: built from ``captioner`` now, i.e. the initial model).
        similarity: the ``sim`` model (default for ``sim="clip"``: :class:`CLIPSimilarity` of ``reward``; required
            for ``sim="itm"``).
        phi: VLRM-RS's own CLIP for eq. 5, its image embeddings in ``batch.extra_feats["phi"]``.
    """

    section = "vlrm"
    option_docs = {"": VLRMConfig}
    lora_adapters = ("policy", "value")
    #: VLRM-RS: ``sim += contrastive_weight * Phi`` and no reference term, whatever ``vlrm.retrieval`` says
    retrieval = False
    ablations = {"no_ref": ["vlrm.use_ref=false"],
                 "no_penalties": ["vlrm.penalties.bad=false", "vlrm.penalties.repeat=false", "vlrm.noeos=false"]}
    world_overrides = ["eval.preset=vlrm", "vlrm.sim=clip", f"vlrm.clip_weight={WORLD_CLIP_WEIGHT}"]

    @classmethod
    def defaults(cls) -> dict[str, Any]:
        return {**plain_section(VLRMConfig(), drop=("rollout_decoding",)),
                "decoding": {"rollout": decoding_section("vlrm_rollout")},
                "penalties": {"bad": True, "repeat": True, "years": True, "bad_phrases_file": None,
                              "extra_bad_phrases": [], "drop_bad_phrases": []},
                "itm": {"path": "${PRETRAINED:-pretrained}/blip2-itm-vit-g", "dtype": "float32", "batch_size": 64,
                        "max_length": 64},
                "phi": {"arch": None, "tag": None, "pretrained": None, "config_file": None}}

    @classmethod
    def check_inputs(cls, cfg: dict) -> None:
        v = cfg["vlrm"]
        if v["sim"] == "itm":
            require_path(Path(v["itm"]["path"]) / "config.json", "ITM model (BLIP-2) folder",
                         ITM_HINT.format(path=v["itm"]["path"]) + " Or set vlrm.sim=clip.")

    @classmethod
    def needs(cls, cfg: dict, device: torch.device) -> Needs:
        """With ``vlrm.sim=itm``: the ITM model (its similarity, and the images preprocessed for it)."""
        v, needs = cfg["vlrm"], Needs()
        if v["sim"] == "itm":
            itm, itok, proc = load_blip2_itm(v["itm"]["path"], device,
                                             resolve_dtype(v["itm"]["dtype"], device, key="vlrm.itm.dtype"))
            needs.models["similarity"] = ITMSimilarity(itm, itok, float(v["itm_weight"]), int(v["itm"]["batch_size"]),
                                                       int(v["itm"]["max_length"]))
            needs.pixel_transform = lambda im: proc(images=im, return_tensors="pt")["pixel_values"][0]
        return needs

    @classmethod
    def options(cls, cfg: dict) -> VLRMConfig:
        """The ``vlrm`` section as the recipe's options; the value adapter trains when ``captioner.lora.value``
        is set."""
        v = dict(cfg["vlrm"])
        lora = cfg["captioner"].get("lora") or {}
        return dataclass_from(VLRMConfig, v, rollout_decoding=v["decoding"]["rollout"],
                              retrieval=cls.retrieval or bool(v.get("retrieval")),
                              value_adapter=bool(lora.get("enabled") and lora.get("value")))

    @classmethod
    def from_config(cls, cfg: dict, setup: Setup) -> VLRMRecipe:
        """The recipe of :meth:`options`, with the ITM similarity and the ``Phi`` CLIP of its set-up, if any."""
        return cls(setup.captioner, setup.reward, cls.options(cfg), similarity=setup.needs.models.get("similarity"),
                   phi=setup.needs.models.get("phi"))

    def __init__(self, captioner: PrefixCaptioner, reward: CLIPReward | None, config: VLRMConfig | None = None,
                 reference: ReferenceScorer | None = None, similarity: Similarity | None = None,
                 phi: CLIPReward | None = None) -> None:
        self.captioner, self.reward = captioner, reward
        self.cfg = config or VLRMConfig()
        c = self.cfg
        if similarity is None:
            if c.sim == "itm":
                raise ValueError("vlrm.sim='itm' needs an ITM similarity (vlrm.itm.path: a local "
                                 "Salesforce/blip2-itm-vit-g folder), or set vlrm.sim=clip")
            if reward is None:
                raise ValueError("vlrm.sim='clip' needs the reward CLIP")
            similarity = CLIPSimilarity(reward, c.clip_weight)
        self.similarity = similarity
        self.phi, self.phi_key = (phi, "phi") if phi is not None else (reward, None)
        if c.retrieval and self.phi is None:
            raise ValueError("VLRM-RS (retrieval) needs a CLIP for eq. 5: the reward CLIP or vlrm.phi")
        self.use_ref = c.use_ref and not c.retrieval
        self.reference = (reference or ReferenceScorer(captioner, c.ref_mode)) if self.use_ref else None
        self.rules = PenaltyRules.from_config(c.penalties)
        self.value_head = ValueHead(_hidden_size(captioner), c.value_width).to(captioner.device)
        if c.value_adapter and "value" not in adapter_names(captioner.lm):
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
    def similarity_reward(self, batch: Batch, texts: list[str]) -> tuple[Tensor, dict[str, float]]:
        """``[B]`` ``sim`` of eq. 1 (and eq. 5 for RS) with its parts for logging."""
        c = self.cfg
        sim = self.similarity(batch, texts).float()
        parts = {f"sim_{c.sim}": float(sim.mean())}
        if c.retrieval:
            txt = encode_reward_texts(self.phi, texts)
            img = (batch.extra_feats[self.phi_key] if self.phi_key else batch.reward_feats).to(txt.device).float()
            phi = normalized_contrastive_term(img, txt, c.contrastive_temperature)
            sim = sim + c.contrastive_weight * phi.to(sim.device)
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
    def returns(self, batch: Batch, rollout: Rollout, sim: Tensor | None = None,
                parts: dict[str, float] | None = None) -> tuple[Tensor, dict[str, float]]:
        """``[B, N]`` per-token returns of eq. 1 and the reward parts (``sim [B]`` computed here unless given)."""
        emb = batch.prefix_feats.to(self.captioner.device)
        if sim is None:
            sim, parts = self.similarity_reward(batch, rollout.texts)
        parts = dict(parts or {})
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
        """Roll out, score and return the policy and value losses of the whole batch."""
        return next(self.chunked_steps(batch, None))

    def chunked_steps(self, batch: Batch, micro_batch: int | None) -> Iterator[StepResult]:
        """The losses of ``batch`` in micro-batches of ``micro_batch`` images (``None``: one), each to be
        back-propagated before the next is computed (see :meth:`chunk_losses`). Generation runs per micro-batch;
        ``sim`` (eq. 5 is a batch statistic) over the whole batch."""
        c, cap = self.cfg, self.captioner
        n = len(batch)
        size = n if not micro_batch or micro_batch >= n else int(micro_batch)
        chunks = [batch.subset(slice(s, s + size)) for s in range(0, n, size)]
        rolls = [generate_rollout(cap, ch.prefix_feats.to(cap.device), c.rollout_decoding) for ch in chunks]
        sim, parts = self.similarity_reward(batch, [t for r in rolls for t in r.texts])
        rets, offset = [], 0
        for ch, r in zip(chunks, rolls):
            rets.append(self.returns(ch, r, sim[offset:offset + len(ch)], parts))
            offset += len(ch)
        yield from self.chunk_losses(chunks, rolls, rets)

    def chunk_losses(self, chunks: list[Batch], rolls: list[Rollout],
                     rets: list[tuple[Tensor, dict[str, float]]]) -> Iterator[StepResult]:
        """Losses of each chunk's rollout and returns; their gradients add up to the full batch's: advantages are
        normalised with the whole batch's mean and std of ``A = R - V`` (a gradient-free pass over the chunks gives
        them when there are several), and each chunk's losses are weighted by its share of the batch."""
        n = sum(len(ch) for ch in chunks)
        mean = std = None
        if len(chunks) > 1:
            with torch.no_grad():
                flat = torch.cat([(ret - self._forward(ch, r)[2])[r.token_mask.bool()]
                                  for ch, r, (ret, _) in zip(chunks, rolls, rets)]).float()
            mean, std = flat.mean(), flat.std()
        for ch, r, (ret, part) in zip(chunks, rolls, rets):
            yield self._losses(ch, r, ret, part, len(ch) / n, mean, std)

    def _forward(self, batch: Batch, rollout: Rollout) -> tuple[Tensor, Tensor | None, Tensor]:
        """``(logp [B, N], hidden, values [B, N])`` of the rollout (with grad where the modules have it)."""
        emb = batch.prefix_feats.to(self.captioner.device)
        logp, hidden = forward_tokens(self.captioner, emb, rollout.ids, rollout.mask, hidden=not self.cfg.value_adapter)
        return logp, hidden, self.values(emb, rollout, hidden)

    def _losses(self, batch: Batch, rollout: Rollout, ret: Tensor, parts: dict[str, float], share: float,
                mean: Tensor | None, std: Tensor | None) -> StepResult:
        c, mask = self.cfg, rollout.token_mask
        logp, _, values = self._forward(batch, rollout)
        if mean is None:
            adv = normalize_advantages(ret - values.detach(), mask, c.adv_eps)
        else:
            adv = ((ret - values.detach()).float() - mean) / (std + c.adv_eps) * mask.float()
        lp = share * probability_policy_loss(logp, adv, mask)
        lv = share * value_loss(values, ret, mask)
        groups = self.parameter_groups()
        stats = detach_stats(policy_loss=lp / share, value_loss=lv / share, ret_first=ret[:, 0],
                             logp=sequence_mean_logprob(logp, mask), tokens=mask.sum(-1).float(),
                             value_error=masked_mean_per_row((ret - values.detach()).abs(), mask))
        stats.update(parts)
        return StepResult([(lp, groups["policy"]), (lv, groups["value"])], stats, rollout.texts[:4], share)

    def state_dict(self) -> dict[str, Any]:
        return {"value_head": self.value_head.state_dict()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if "value_head" in state:
            self.value_head.load_state_dict(state["value_head"])


@register_recipe("vlrm_retrieval")
class VLRMRetrievalRecipe(VLRMRecipe):
    """VLRM-RS: VLRM with the retrieval term of eq. 5 and no reference term; ``Phi`` from its own CLIP
    (``vlrm.phi``), else the reward CLIP."""

    retrieval = True

    @classmethod
    def needs(cls, cfg: dict, device: torch.device) -> Needs:
        """VLRM's, and ``vlrm.phi``'s CLIP (its image embeddings as the extra feature ``phi``) when it names one."""
        needs, f = super().needs(cfg, device), cfg["vlrm"]["phi"]
        if f.get("arch"):
            fclip, fpre, ftok = load_named_clip(f["arch"], f.get("tag"), f.get("pretrained"), device,
                                                f.get("config_file"))
            needs.extra_clips["phi"] = (fclip, fpre, f["arch"], str(f.get("pretrained")))
            needs.models["phi"] = rlcf.CLIPReward(fclip, ftok)
        return needs
