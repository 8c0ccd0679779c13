"""Rollouts of a :class:`tasks.captioning.model.PrefixCaptioner`: token ids, not only texts.

RL needs the exact generated tokens (per-token returns, the no-EOS penalty, probabilities of the sampled
tokens), so generation here returns ids laid out as the captioner's teacher forcing expects::

    ids  [B, L] = [BOS, t_1 .. t_n, PAD ...]     t_n = STOP when the caption was ended by the model
    mask [B, L] = 1 on BOS and t_1 .. t_n

and :func:`forward_tokens` gives the teacher-forced ``log p(t_k)`` ``[B, L-1]`` (aligned with ``mask[:, 1:]``),
optionally with the LM's last hidden states at the positions that predict each token (the value head input).
"""
from __future__ import annotations

import copy
import logging
import warnings
from dataclasses import dataclass
from typing import Sequence

import torch
from torch import Tensor, nn

from tasks.captioning.model import PrefixCaptioner

from .lora import set_active

logger = logging.getLogger(__name__)

__all__ = ["Rollout", "pack_tokens", "generate_rollout", "rollout_from_texts", "forward_tokens",
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


def pack_tokens(captioner: PrefixCaptioner, token_lists: Sequence[Sequence[int]]) -> tuple[Tensor, Tensor]:
    """``[BOS] + tokens`` right-padded: ``ids [B, L]``, ``mask [B, L]`` (no STOP is added)."""
    seqs = [[captioner.bos_id] + list(t) for t in token_lists]
    length = max(len(s) for s in seqs)
    ids = torch.full((len(seqs), length), captioner.pad_id, dtype=torch.long)
    mask = torch.zeros((len(seqs), length), dtype=torch.long)
    for i, s in enumerate(seqs):
        ids[i, :len(s)] = torch.tensor(s, dtype=torch.long)
        mask[i, :len(s)] = 1
    return ids.to(captioner.device), mask.to(captioner.device)


def _decode(captioner: PrefixCaptioner, tokens: Sequence[int]) -> str:
    toks = [t for t in tokens if t != captioner.stop_id]
    text = captioner.tokenizer.decode(toks, skip_special_tokens=True)
    if captioner.config.stop_token:
        text = text.split(captioner.config.stop_token)[0]
    return text.strip()


def _finish(captioner: PrefixCaptioner, rows: Sequence[Sequence[int]]) -> Rollout:
    tokens, ended = [], []
    for row in rows:
        row = list(row)
        if captioner.stop_id in row:
            row = row[:row.index(captioner.stop_id) + 1]
            ended.append(True)
        else:
            ended.append(False)
        tokens.append(row)
    ids, mask = pack_tokens(captioner, tokens)
    return Rollout(ids, mask, tokens, [_decode(captioner, t) for t in tokens],
                   torch.tensor(ended, dtype=torch.bool, device=ids.device))


@torch.no_grad()
def generate_rollout(captioner: PrefixCaptioner, emb: Tensor, mode: str = "sample", *, num_beams: int = 5,
                     top_k: int = 6, temperature: float = 2.0, top_p: float = 1.0, no_repeat_ngram_size: int = 0,
                     max_new_tokens: int | None = None, min_new_tokens: int | None = None) -> Rollout:
    """One caption per row of ``emb [B, D]`` (no grad, eval mode, KV cache).

    Args:
        mode: ``"sample"`` (top-k / temperature / top-p sampling; VLRM: top-k 6, temperature 2),
            ``"beam"`` (``num_beams`` beams, the best one) or ``"greedy"``.
        no_repeat_ngram_size: forbid repeated n-grams (Chaffin et al.'s beam search: 3); 0 = off.
        max_new_tokens, min_new_tokens: default to the captioner config.
    """
    from transformers import GenerationConfig

    if mode not in ("sample", "beam", "greedy"):
        raise ValueError(f"mode must be 'sample', 'beam' or 'greedy', got '{mode}'")
    cfg = captioner.config
    prefix = captioner.prefix(emb)
    b = prefix.shape[0]
    bos = torch.full((b, 1), captioner.bos_id, dtype=torch.long, device=prefix.device)
    tok = captioner.lm.get_input_embeddings()(bos)
    embeds = torch.cat([prefix.to(tok.dtype), tok], dim=1)
    att = torch.ones(embeds.shape[:2], dtype=torch.long, device=prefix.device)
    sample = mode == "sample"
    gen = GenerationConfig(
        do_sample=sample, num_beams=num_beams if mode == "beam" else 1, num_return_sequences=1,
        top_k=top_k if sample else None, top_p=top_p if sample else None, temperature=temperature if sample else None,
        no_repeat_ngram_size=no_repeat_ngram_size or None,
        max_new_tokens=max_new_tokens or cfg.max_new_tokens, min_new_tokens=cfg.min_new_tokens if min_new_tokens is None
        else min_new_tokens, length_penalty=cfg.length_penalty, eos_token_id=captioner.stop_id,
        pad_token_id=captioner.pad_id, bos_token_id=captioner.bos_id, use_cache=True)
    was_training = captioner.training
    captioner.eval()
    try:
        with warnings.catch_warnings():   # n-gram blocking applies to generated tokens only: what we want
            warnings.filterwarnings("ignore", message=".*no_repeat_ngram_size.*inputs_embeds.*")
            seqs = captioner.lm.generate(inputs_embeds=embeds, attention_mask=att, generation_config=gen)
    finally:
        captioner.train(was_training)
    return _finish(captioner, seqs.tolist())


def rollout_from_texts(captioner: PrefixCaptioner, texts: Sequence[str], max_tokens: int | None = None) -> Rollout:
    """Ground-truth captions as a rollout: tokens (cut to ``max_tokens``) + STOP, ``ended`` everywhere."""
    toks = captioner.tokenizer(list(texts), add_special_tokens=False).input_ids
    rows = [list(t[:max_tokens] if max_tokens is not None else t) + [captioner.stop_id] for t in toks]
    return _finish(captioner, rows)


def forward_tokens(captioner: PrefixCaptioner, emb: Tensor, ids: Tensor, mask: Tensor, hidden: bool = False,
                   prefix: Tensor | None = None) -> tuple[Tensor, Tensor | None]:
    """Teacher-forced log-probs of ``ids[:, 1:]`` given ``[prefix ; ids]`` (with grad where the model has it).

    Args:
        emb: ``[B, D]`` CLIP embeddings (ignored when ``prefix`` is given).
        ids, mask: ``[B, L]`` as :class:`Rollout`.
        hidden: also return the last hidden states ``[B, L-1, H]`` at the positions predicting ``ids[:, 1:]``.
        prefix: a precomputed ``[B, P, E]`` prefix (e.g. detached, for a value-only forward).
    Returns:
        ``(logp [B, L-1] (0 on padding), hidden or None)``.
    """
    prefix = captioner.prefix(emb) if prefix is None else prefix
    tok = captioner.lm.get_input_embeddings()(ids)
    p = prefix.shape[1]
    x = torch.cat([prefix.to(tok.dtype), tok], dim=1)
    att = torch.cat([torch.ones(mask.shape[0], p, dtype=mask.dtype, device=mask.device), mask], dim=1)
    out = captioner.lm(inputs_embeds=x, attention_mask=att, use_cache=False, output_hidden_states=hidden)
    logits = out.logits[:, p:-1].float()
    logp = torch.log_softmax(logits, dim=-1).gather(-1, ids[:, 1:, None]).squeeze(-1)
    logp = logp * mask[:, 1:].to(logp.dtype)
    hid = out.hidden_states[-1][:, p:-1] if hidden else None
    return logp, hid


def sequence_mean_logprob(logp: Tensor, token_mask: Tensor) -> Tensor:
    """``[B, N]`` token log-probs -> ``[B]`` mean over each caption's tokens."""
    m = token_mask.to(logp.dtype)
    return (logp * m).sum(-1) / m.sum(-1).clamp(min=1)


class ReferenceScorer(nn.Module):
    """VLRM's ``ref(text)``: mean token log-probability of the generated tokens under a frozen reference.

    Args:
        captioner: the *initial* (supervised) captioner; a frozen copy is kept.
        mode: ``"lm"`` (the paper: the language model alone, ``log p(t_k | BOS, t_<k)``, no image) or
            ``"captioner"`` (the initial captioner, conditioned on the image: for an LM that never saw text
            without a prefix, e.g. the embedded world's tiny LM trained from scratch).
    """

    def __init__(self, captioner: PrefixCaptioner, mode: str = "lm") -> None:
        super().__init__()
        if mode not in ("lm", "captioner"):
            raise ValueError(f"reference mode must be 'lm' or 'captioner', got '{mode}'")
        self.mode = mode
        src = captioner.lm if mode == "lm" else captioner
        self.model = copy.deepcopy(src).eval().requires_grad_(False)
        set_active(self.model, ())   # adapters (if any) off: the reference is the base model

    def train(self, mode: bool = True) -> ReferenceScorer:
        super().train(mode)
        self.model.eval()
        return self

    @torch.no_grad()
    def forward(self, emb: Tensor, rollout: Rollout) -> Tensor:
        """``[B]`` mean log-probability of each rollout's ``t_1 .. t_n``."""
        if self.mode == "captioner":
            logp, _ = forward_tokens(self.model, emb, rollout.ids, rollout.mask)
        else:
            logits = self.model(input_ids=rollout.ids, attention_mask=rollout.mask, use_cache=False).logits[:, :-1]
            logp = torch.log_softmax(logits.float(), -1).gather(-1, rollout.ids[:, 1:, None]).squeeze(-1)
        return sequence_mean_logprob(logp, rollout.token_mask)
