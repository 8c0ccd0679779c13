"""The captioning policy for RLCF test-time adaptation (:class:`rlcf.GenerativePolicy`).

Per test image (official ``capdec_tta.py``, same for ClipCap and CapDec)::

    q = policy.encode_query(image)           # [1, D] frozen, normalised CLIP image embedding (once)
    texts = policy.generate(q, K)            # K captions by beam search (num_beams = K), no grad
    r = reward(texts)                        # [1, K] CLIPScore of the raw captions (reward CLIP)
    logp = policy.sequence_logprob(q, texts) # [1, K] mean token log-prob, grad through the mapper
    loss = -mean((r - mean_K r) * logp)      # in rlcf.methods.RLCF.generative_loss
    ...4 steps, then policy.predict(q)       # 5-beam caption, lower-cased

Only the mapper is trainable: the CLIP encoder and the LM have ``requires_grad=False``.
"""
from __future__ import annotations

import logging

import torch
import torch.nn.functional as F
from torch import Tensor, nn

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
        self.clip_model = clip_model.eval().requires_grad_(False)
        self.captioner.lm.requires_grad_(False)
        self.captioner.train_lm = False
        self.candidates = candidates
        self.final_beams = final_beams
        self.lowercase = lowercase

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
    def predict(self, q: Tensor) -> list[str]:
        """Final caption per row: beam search with ``final_beams`` beams, stripped (and lower-cased)."""
        caps = [row[0] for row in self.captioner.generate(q, num_return_sequences=1, num_beams=self.final_beams)]
        return [c.lower() if self.lowercase else c for c in caps]
