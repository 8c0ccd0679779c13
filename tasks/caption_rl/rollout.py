"""Rollouts of a :class:`tasks.captioning.model.PrefixCaptioner`: token ids, not only texts.

RL needs the exact generated tokens (per-token returns, the no-EOS penalty, probabilities of the sampled
tokens). Generation, packing, decoding and teacher forcing are the captioner's own
(:meth:`~tasks.captioning.model.PrefixCaptioner.generate` with ``return_tokens=True``,
:meth:`~tasks.captioning.model.PrefixCaptioner.pack` with ``add_stop=False``,
:meth:`~tasks.captioning.model.PrefixCaptioner.forward_tokens`); this module only lays the ids out as
teacher forcing expects::

    ids  [B, L] = [BOS, t_1 .. t_n, PAD ...]     t_n = STOP when the caption was ended by the model
    mask [B, L] = 1 on BOS and t_1 .. t_n

and :func:`forward_tokens` gives the teacher-forced ``log p(t_k)`` ``[B, L-1]`` (aligned with ``mask[:, 1:]``),
optionally with the LM's last hidden states at the positions that predict each token (the value head input).
"""
from __future__ import annotations

import copy
import logging
from dataclasses import dataclass
from typing import Sequence

import torch
from torch import Tensor, nn

from tasks.captioning.model import PrefixCaptioner

from .decoding import DecodingConfig
from .lora import strip_lora

logger = logging.getLogger(__name__)

__all__ = ["Rollout", "rollout_from_tokens", "generate_rollout", "rollout_from_texts", "forward_tokens",
           "sequence_mean_logprob", "ReferenceScorer"]


@dataclass
class Rollout:
    """A batch of captions as token ids (see the module docstring)."""

    ids: Tensor                 # [B, L]
    mask: Tensor                # [B, L]
    tokens: list[list[int]]     # t_1 .. t_n of each caption (STOP included when generated)
    texts: list[str]            # decoded captions (STOP and special tokens removed, stripped)
    ended: Tensor               # [B] bool: t_n is STOP

    @property
    def token_mask(self) -> Tensor:
        """``[B, L-1]`` mask of ``t_1 .. t_n``, aligned with :func:`forward_tokens` outputs."""
        return self.mask[:, 1:]

    def __len__(self) -> int:
        return len(self.tokens)


def rollout_from_tokens(captioner: PrefixCaptioner, rows: Sequence[Sequence[int]]) -> Rollout:
    """A :class:`Rollout` of token id rows (each cut after its first STOP)."""
    tokens = [captioner.cut_at_stop(r) for r in rows]
    ended = [bool(t) and t[-1] == captioner.stop_id for t in tokens]
    ids, mask = captioner.pack(tokens, add_stop=False)
    return Rollout(ids, mask, tokens, captioner.decode_tokens(tokens),
                   torch.tensor(ended, dtype=torch.bool, device=ids.device))


@torch.no_grad()
def generate_rollout(captioner: PrefixCaptioner, emb: Tensor, decoding: DecodingConfig | str = "sample", *,
                     num_beams: int = 5, top_k: int = 6, temperature: float = 2.0, top_p: float = 1.0,
                     no_repeat_ngram_size: int = 0, max_new_tokens: int | None = None,
                     min_new_tokens: int | None = None) -> Rollout:
    """One caption per row of ``emb [B, D]`` (no grad, eval mode, KV cache).

    Args:
        decoding: a :class:`~tasks.caption_rl.decoding.DecodingConfig` (the recipes' way), or a mode
            ``"sample"`` / ``"beam"`` / ``"greedy"`` with the keyword options below (defaults: VLRM's top-k 6,
            temperature 2 sampling).
    """
    if not isinstance(decoding, DecodingConfig):
        decoding = DecodingConfig(mode=decoding, num_beams=num_beams, top_k=top_k, temperature=temperature,
                                  top_p=top_p, no_repeat_ngram_size=no_repeat_ngram_size,
                                  max_new_tokens=max_new_tokens, min_new_tokens=min_new_tokens)
    _, tokens = captioner.generate(emb, **decoding.generate_kwargs(captioner.tokenizer), return_tokens=True)
    return rollout_from_tokens(captioner, [row[0] for row in tokens])


def rollout_from_texts(captioner: PrefixCaptioner, texts: Sequence[str], max_tokens: int | None = None) -> Rollout:
    """Ground-truth captions as a rollout: tokens (cut to ``max_tokens``) + STOP, ``ended`` everywhere."""
    toks = captioner.tokenizer(list(texts), add_special_tokens=False).input_ids
    rows = [list(t[:max_tokens] if max_tokens is not None else t) + [captioner.stop_id] for t in toks]
    return rollout_from_tokens(captioner, rows)


def forward_tokens(captioner: PrefixCaptioner, emb: Tensor, ids: Tensor, mask: Tensor, hidden: bool = False,
                   prefix: Tensor | None = None) -> tuple[Tensor, Tensor | None]:
    """:meth:`PrefixCaptioner.forward_tokens`: ``(logp [B, L-1] (0 on padding), hidden [B, L-1, H] or None)``."""
    return captioner.forward_tokens(emb, ids, mask, prefix=prefix, hidden=hidden)


def sequence_mean_logprob(logp: Tensor, token_mask: Tensor) -> Tensor:
    """``[B, N]`` token log-probs -> ``[B]`` mean over each caption's tokens."""
    m = token_mask.to(logp.dtype)
    return (logp * m).sum(-1) / m.sum(-1).clamp(min=1)


class ReferenceScorer(nn.Module):
    """VLRM's ``ref(text)``: mean token log-probability of the generated tokens under a frozen reference.

    Args:
        captioner: the *initial* (supervised) captioner; a frozen copy is kept, without LoRA adapters.
        mode: ``"lm"`` (the paper: the language model alone, ``log p(t_k | BOS, t_<k)``, no image) or
            ``"captioner"`` (the initial captioner, conditioned on the image: for an LM that never saw text
            without a prefix, e.g. the embedded world's tiny LM trained from scratch).
    """

    def __init__(self, captioner: PrefixCaptioner, mode: str = "lm") -> None:
        super().__init__()
        if mode not in ("lm", "captioner"):
            raise ValueError(f"reference mode must be 'lm' or 'captioner', got '{mode}'")
        self.mode = mode
        src = copy.deepcopy(captioner.lm if mode == "lm" else captioner)
        if mode == "lm":
            src = strip_lora(src)        # the reference is the base model: adapters removed, not merged
        else:
            src.lm = strip_lora(src.lm)
        self.model = src.eval().requires_grad_(False)

    def train(self, mode: bool = True) -> ReferenceScorer:
        super().train(mode)
        self.model.eval()
        return self

    @torch.no_grad()
    def forward(self, emb: Tensor, rollout: Rollout) -> Tensor:
        """``[B]`` mean log-probability of each rollout's ``t_1 .. t_n``."""
        if self.mode == "captioner":
            logp, _ = self.model.forward_tokens(emb, rollout.ids, rollout.mask)
        else:
            logits = self.model(input_ids=rollout.ids, attention_mask=rollout.mask, use_cache=False).logits[:, :-1]
            logp = torch.log_softmax(logits.float(), -1).gather(-1, rollout.ids[:, 1:, None]).squeeze(-1)
        return sequence_mean_logprob(logp, rollout.token_mask)
