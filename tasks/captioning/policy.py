"""The captioning policy for RLCF test-time adaptation (an :class:`rlcf.Policy`).

Per test image (official ``capdec_tta.py``, same for ClipCap and CapDec)::

    ro = policy.rollout(ep, sampling)        # K captions by beam search (num_beams = K), no grad, and their
                                             # [1, K] scores (grad through the mapper); query = the image
    r = reward(ro.query, ro.candidates)      # [1, K] CLIPScore of the raw captions (reward CLIP)
    loss = -mean((r - mean_K r) * ro.logprobs)   # rlcf.methods.RLCF.loss, as for every policy
    ...4 steps, then policy.predict(ep)      # 5-beam caption, lower-cased

Only the mapper is trained (:meth:`CaptionPolicy.trainable_parameters`); the CLIP encoder and the LM
are frozen. The image's CLIP embedding is computed once per sample.
"""
from __future__ import annotations

import logging

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.profiler import record_function

from rlcf.policy import Episode, Rollout, Sampling

from .model import PrefixCaptioner

logger = logging.getLogger(__name__)

__all__ = ["CaptionPolicy", "TOKEN_LOSSES"]

TOKEN_LOSSES = ("official", "clean")


class CaptionPolicy(nn.Module):
    """Generative policy over a :class:`PrefixCaptioner` and a frozen CLIP image encoder.

    Args:
        captioner: the captioner; its mapper is the trainable part.
        clip_model: frozen CLIP (``encode_image``) giving the prefix embedding (ViT-B/16 officially).
        candidates: ``"beam"`` (official: ``num_beams = K``, ``num_return_sequences = K``) or
            ``"sample"`` (nucleus sampling, ``top_p``/``temperature`` from the captioner config).
        final_beams: beams of the final caption (official 5).
        lowercase: lower-case the final caption (official).
        token_loss: the candidates' score in the policy-gradient loss. ``"official"`` (the paper
            configs): minus the official per-caption token loss, averaged over the padded length with
            the BOS and pad targets in (:meth:`PrefixCaptioner.official_tta_logprob`); ``"clean"``: the
            mean log-prob of each caption's own tokens and STOP, pads excluded.
    """

    def __init__(self, captioner: PrefixCaptioner, clip_model: nn.Module, candidates: str = "beam",
                 final_beams: int = 5, lowercase: bool = True, token_loss: str = "clean") -> None:
        super().__init__()
        if candidates not in ("beam", "sample"):
            raise ValueError(f"candidates must be 'beam' or 'sample', got '{candidates}'")
        if token_loss not in TOKEN_LOSSES:
            raise ValueError(f"token_loss must be one of {TOKEN_LOSSES}, got '{token_loss}'")
        self.token_loss = token_loss
        self.captioner = captioner
        self.clip_model = clip_model.eval()
        self.candidates = candidates
        self.final_beams = final_beams
        self.lowercase = lowercase

    def trainable_parameters(self) -> dict[str, nn.Parameter]:
        """The mapper (official: ``clip_project``); the CLIP encoder and the LM stay frozen."""
        return {f"captioner.mapper.{n}": p for n, p in self.captioner.mapper.named_parameters()}

    def train(self, mode: bool = True) -> "CaptionPolicy":
        super().train(mode)
        self.clip_model.eval()
        self.captioner.lm.eval()
        return self

    @torch.no_grad()
    def encode_query(self, images: Tensor) -> Tensor:
        """``[B, 3, H, W]`` preprocessed images -> ``[B, D]`` L2-normalised CLIP image embeddings (fp32)."""
        dev = next(self.clip_model.parameters()).device
        return F.normalize(self.clip_model.encode_image(images.to(dev)).float(), dim=-1)

    def generate(self, q: Tensor, k: int) -> list[list[str]]:
        """``B`` lists of ``k`` candidate captions (no grad; beam search or sampling)."""
        return self.captioner.generate(q, num_return_sequences=k, do_sample=self.candidates == "sample")

    def sequence_logprob(self, q: Tensor, texts: list[list[str]]) -> Tensor:
        """``[B, K]`` score of each candidate, differentiable through the mapper only: the mean token
        log-prob of the caption tokens and STOP, pads excluded (``token_loss="clean"``), or minus the
        official padded token loss (``"official"``)."""
        b, k = len(texts), len(texts[0])
        if b != q.shape[0] or any(len(t) != k for t in texts):
            raise ValueError(f"need {q.shape[0]} rows of K={k} captions, got {[len(t) for t in texts]}")
        flat = [t for row in texts for t in row]
        emb = q.repeat_interleave(k, dim=0)
        if self.token_loss == "official":
            return self.captioner.official_tta_logprob(emb, flat).view(b, k)
        return self.captioner.mean_logprob(emb, flat).view(b, k)

    @torch.no_grad()
    def caption(self, q: Tensor) -> list[str]:
        """Final caption per row of ``q [B, D]``: beam search with ``final_beams`` beams, stripped (and lower-cased)."""
        caps = [row[0] for row in self.captioner.generate(q, num_return_sequences=1, num_beams=self.final_beams)]
        return [c.lower() if self.lowercase else c for c in caps]

    # ------------------------------------------------------------------ the policy contract
    def query(self, ep: Episode) -> Tensor:
        """The image's ``[1, D]`` CLIP embedding, once per sample."""
        if ep.query_features is None:
            ep.query_features = self.encode_query(ep.inputs)
        return ep.query_features

    def rollout(self, ep: Episode, sampling: Sampling) -> Rollout:
        """``sampling.k`` captions of the image (no grad) and their differentiable scores; the reward's query
        is the image itself."""
        q = self.query(ep)
        with record_function("rlcf/policy (generate candidates)"):
            texts = self.generate(q, sampling.k)
        with record_function("rlcf/policy (caption log-probs)"):
            logp = self.sequence_logprob(q, texts)
        return Rollout(texts, logp, ep.inputs)

    @torch.no_grad()
    def predict(self, ep: Episode) -> str:
        """The final caption of the image (view 0)."""
        return self.caption(self.query(ep)[:1])[0]
