"""Distinctiveness and quality of generated captions.

* **CLIP Recall** (VLRM, Table 3): one generated caption per test image; each caption retrieves among *all* the
  test images with a CLIP model (images centre-cropped: open_clip's eval preprocessing, resize of the shorter
  side then centre crop); MRR, R@1, R@5, R@10 of the true image (text-to-image).
* **Image-to-text** retrieval as Chaffin et al. report it: each image ranks all the generated captions.
* **Quality / collapse**: Self-BLEU, vocabulary size, mean length (from :mod:`tasks.captioning.metrics`), and
  :func:`self_bleu_official`, Chaffin et al.'s Self-BLEU-5 (their ``SelfBleu``: NLTK ``sentence_bleu`` with
  uniform 5-gram weights and smoothing ``method1``, each of the *first* 1000 captions against the other 999,
  punctuation removed before tokenising), restated here without NLTK.

Ranks are 1-based; a candidate scoring exactly as the true item is counted ahead of it (pessimistic ties,
so constant scores never look good).
"""
from __future__ import annotations

import logging
import math
import string
from collections import Counter
from typing import Callable, Sequence

import torch
from torch import Tensor, nn

from rlcf.reward import encode_batched
from tasks.captioning.metrics import self_bleu, simple_tokenize, vocab_size

from .contrastive import cosine_matrix

logger = logging.getLogger(__name__)

__all__ = ["retrieval_ranks", "rank_metrics", "clip_recall", "image_to_text_recall", "quality_metrics",
           "distinctiveness_metrics", "encode_texts", "encode_images", "sentence_bleu", "self_bleu_official"]


def retrieval_ranks(scores: Tensor, targets: Tensor | None = None, chunk: int = 1024) -> Tensor:
    """1-based rank of each query's target: ``1 + #{j != target : scores[q, j] >= scores[q, target]}``.

    Args:
        scores: ``[Q, G]`` query-gallery scores.
        targets: ``[Q]`` gallery index of each query's true item (default ``arange(Q)``: the diagonal).
        chunk: queries per block (bounded memory for 5k x 5k).
    Returns:
        ``[Q]`` long ranks.
    """
    q = scores.shape[0]
    targets = torch.arange(q, device=scores.device) if targets is None else targets.to(scores.device).long()
    out = []
    for s in range(0, q, chunk):
        block, tgt = scores[s:s + chunk].float(), targets[s:s + chunk]
        true = block.gather(1, tgt[:, None])
        ahead = (block >= true).sum(1) - 1      # the target itself is >= itself
        out.append(ahead + 1)
    return torch.cat(out).long()


def rank_metrics(ranks: Tensor, ks: Sequence[int] = (1, 5, 10), prefix: str = "") -> dict[str, float]:
    """``{prefix+"MRR", prefix+"R@k"...}`` from 1-based ranks (fractions in ``[0, 1]``, as VLRM's table)."""
    r = ranks.float()
    out = {f"{prefix}MRR": float((1.0 / r).mean())}
    for k in ks:
        out[f"{prefix}R@{k}"] = float((r <= k).float().mean())
    return out


def clip_recall(text_feats: Tensor, image_feats: Tensor, ks: Sequence[int] = (1, 5, 10)) -> dict[str, float]:
    """VLRM's CLIP Recall: caption ``q`` (of image ``q``) retrieves among all ``N`` images.

    Args:
        text_feats: ``[N, D]`` CLIP embeddings of one generated caption per image.
        image_feats: ``[N, D]`` CLIP embeddings of the centre-cropped images (same order).
    """
    if text_feats.shape[0] != image_feats.shape[0]:
        raise ValueError(f"{text_feats.shape[0]} captions for {image_feats.shape[0]} images: need one per image")
    return rank_metrics(retrieval_ranks(cosine_matrix(text_feats, image_feats)), ks)


def image_to_text_recall(text_feats: Tensor, image_feats: Tensor, ks: Sequence[int] = (1, 5, 10)) -> dict[str, float]:
    """Image ``q`` retrieves its own generated caption among all ``N`` captions (Chaffin et al.'s "text" side)."""
    if text_feats.shape[0] != image_feats.shape[0]:
        raise ValueError(f"{text_feats.shape[0]} captions for {image_feats.shape[0]} images: need one per image")
    return rank_metrics(retrieval_ranks(cosine_matrix(image_feats, text_feats)), ks)


def sentence_bleu(references: Sequence[Sequence[str]], hypothesis: Sequence[str], n: int = 4,
                  epsilon: float = 0.1) -> float:
    """NLTK's ``sentence_bleu(references, hypothesis, weights=(1/n,) * n, smoothing_function=method1)``.

    Clipped n-gram precisions ``p_k = sum_g min(count_h(g), max_r count_r(g)) / max(1, #hypothesis k-grams)``; a
    zero numerator becomes ``epsilon / denominator`` (``method1``), except that no unigram match at all gives 0;
    brevity penalty ``exp(1 - r / c)`` for ``c <= r`` (``r`` the reference length closest to ``c``, the shorter on a
    tie; 0 for an empty hypothesis); ``BLEU = BP * exp(sum_k log(p_k) / n)``.
    """
    c = len(hypothesis)
    nums, dens = [], []
    for k in range(1, n + 1):
        hyp = Counter(tuple(hypothesis[i:i + k]) for i in range(c - k + 1))
        best: Counter = Counter()
        for ref in references:
            for g, m in Counter(tuple(ref[i:i + k]) for i in range(len(ref) - k + 1)).items():
                best[g] = max(best[g], m)
        nums.append(sum(min(m, best[g]) for g, m in hyp.items()))
        dens.append(max(1, sum(hyp.values())))
    if nums[0] == 0:
        return 0.0
    r = min((len(ref) for ref in references), key=lambda x: (abs(x - c), x))
    bp = 1.0 if c > r else (0.0 if c == 0 else math.exp(1 - r / c))
    p = [(m if m else epsilon) / d for m, d in zip(nums, dens)]
    return bp * math.exp(math.fsum(math.log(x) for x in p) / n)


_PUNCT = str.maketrans({ch: None for ch in string.punctuation})


def self_bleu_official(captions: Sequence[str], n: int = 5, max_captions: int = 1000,
                       strip_punctuation: bool = True) -> float:
    """Chaffin et al.'s Self-BLEU-n (x100): mean :func:`sentence_bleu` of each of the **first** ``max_captions``
    captions (official quirk, kept: ``reference[0:sample_size]``, no shuffling) against all the other ones.

    Tokens: punctuation removed (the official ``compute_metrics`` strips ``string.punctuation`` from the decoded
    captions), then whitespace split (what NLTK's ``word_tokenize`` gives on such text, up to its splitting of a few
    contractions such as "cannot"). Captions are not lower-cased (as the official code).
    """
    toks = [(c.translate(_PUNCT) if strip_punctuation else c).split() for c in captions][:max_captions]
    if len(toks) < 2:
        return 0.0
    return 100.0 * sum(sentence_bleu(toks[:i] + toks[i + 1:], h, n) for i, h in enumerate(toks)) / len(toks)


def quality_metrics(captions: Sequence[str], self_bleu_max: int = 1000,
                    self_bleu_n: int | None = None) -> dict[str, float]:
    """Self-BLEU-4 (x100, pycocoevalcap, on at most ``self_bleu_max`` captions), vocabulary size and mean length
    (words); with ``self_bleu_n``, also ``self_BLEU-<n>`` of :func:`self_bleu_official` (Chaffin et al.: 5)."""
    lengths = [len(simple_tokenize(c).split()) for c in captions]
    out = {"self_BLEU-4": self_bleu(list(captions), max_captions=self_bleu_max), "vocab_size": vocab_size(captions),
           "mean_length": sum(lengths) / max(1, len(lengths))}
    if self_bleu_n:
        out[f"self_BLEU-{self_bleu_n}"] = self_bleu_official(captions, self_bleu_n, self_bleu_max)
    return out


@torch.no_grad()
def encode_texts(model: nn.Module, tokenizer: Callable, texts: Sequence[str], batch_size: int = 256) -> Tensor:
    """``[N, D]`` float32 CLIP text embeddings (unnormalised) on the model's device."""
    if len(texts) == 0:
        return torch.zeros(0)
    dev = next(model.parameters()).device
    return encode_batched(lambda chunk: model.encode_text(tokenizer(list(chunk)).to(dev)), list(texts), batch_size,
                          normalize=False)


@torch.no_grad()
def encode_images(model: nn.Module, images: Tensor, batch_size: int = 256) -> Tensor:
    """``[N, D]`` float32 CLIP image embeddings of preprocessed (centre-cropped) images ``[N, 3, H, W]``."""
    dev = next(model.parameters()).device
    return encode_batched(lambda chunk: model.encode_image(chunk.to(dev)), images, batch_size, normalize=False)


def distinctiveness_metrics(captions: Sequence[str], image_feats: Tensor, model: nn.Module, tokenizer: Callable,
                            self_bleu_max: int = 1000, self_bleu_n: int | None = None,
                            strip_periods: bool = False) -> dict[str, float]:
    """Every metric of this module for one caption per image.

    Args:
        captions: ``N`` generated captions, caption ``q`` for image ``q``.
        image_feats: ``[N, D]`` embeddings of the images by ``model`` (see :func:`encode_images`).
        model, tokenizer: the evaluation CLIP (its text tower encodes the captions).
        self_bleu_n: also Chaffin et al.'s Self-BLEU-n (:func:`self_bleu_official`).
        strip_periods: remove periods before the CLIP text encoder (Chaffin et al.'s evaluation does).
    Returns:
        ``{"t2i/MRR", "t2i/R@1", ..., "i2t/MRR", ..., "self_BLEU-4", "vocab_size", "mean_length", "n"}``.
    """
    text = encode_texts(model, tokenizer, [c.replace(".", "") if strip_periods else c for c in captions])
    img = image_feats.to(text.device)
    out = {f"t2i/{k}": v for k, v in clip_recall(text, img).items()}
    out.update({f"i2t/{k}": v for k, v in image_to_text_recall(text, img).items()})
    out.update(quality_metrics(captions, self_bleu_max, self_bleu_n))
    out["n"] = len(captions)
    return out
