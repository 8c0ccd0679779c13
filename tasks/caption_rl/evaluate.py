"""Evaluation of an RL-trained captioner: one beam-search caption per test image, then distinctiveness
(CLIP Recall t2i, i2t retrieval), collapse (Self-BLEU, vocabulary, length) and, with references, the COCO
n-gram metrics (:func:`tasks.captioning.metrics.coco_metrics`)."""
from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import torch
from torch import Tensor, nn

from tasks.captioning.metrics import coco_metrics
from tasks.captioning.model import PrefixCaptioner

from .metrics import distinctiveness_metrics
from .rollout import generate_rollout

logger = logging.getLogger(__name__)

__all__ = ["EvalSet", "generate_captions", "evaluate_captioner", "make_evaluator"]


@dataclass
class EvalSet:
    """Test images as features.

    Attributes:
        prefix_feats: ``[N, Dp]`` captioner inputs.
        eval_feats: ``[N, De]`` evaluation-CLIP embeddings of the centre-cropped images.
        references: ``N`` reference lists (empty lists: no n-gram metrics).
        ids: ``N`` image ids.
    """

    prefix_feats: Tensor
    eval_feats: Tensor
    references: list[list[str]]
    ids: list[str]


@torch.no_grad()
def generate_captions(captioner: PrefixCaptioner, feats: Tensor, num_beams: int = 5, no_repeat_ngram_size: int = 0,
                      batch_size: int = 64, lowercase: bool = True) -> list[str]:
    """One beam-search caption per row of ``feats [N, D]`` (``num_beams`` 1: greedy)."""
    out: list[str] = []
    mode = "beam" if num_beams > 1 else "greedy"
    for s in range(0, feats.shape[0], batch_size):
        r = generate_rollout(captioner, feats[s:s + batch_size].to(captioner.device), mode, num_beams=num_beams,
                             no_repeat_ngram_size=no_repeat_ngram_size)
        out += [t.lower() if lowercase else t for t in r.texts]
    return out


def evaluate_captioner(captioner: PrefixCaptioner, data: EvalSet, model: nn.Module, tokenizer: Callable,
                       num_beams: int = 5, no_repeat_ngram_size: int = 0, coco: bool = True,
                       metric_options: dict[str, Any] | None = None) -> tuple[dict[str, Any], list[str]]:
    """``(metrics, captions)``: :func:`distinctiveness_metrics` plus COCO metrics when references exist."""
    was_training = captioner.training
    captioner.eval()
    try:
        caps = generate_captions(captioner, data.prefix_feats, num_beams, no_repeat_ngram_size)
    finally:
        captioner.train(was_training)
    metrics: dict[str, Any] = distinctiveness_metrics(caps, data.eval_feats, model, tokenizer)
    if coco and all(data.references):
        opts = {"tokenizer": "auto", "meteor": "auto", "spice": False, **(metric_options or {})}
        refs = {str(i): r for i, r in enumerate(data.references)}
        cands = {str(i): c for i, c in enumerate(caps)}
        metrics.update({k: v for k, v in coco_metrics(refs, cands, **opts).items() if k != "skipped"})
    return metrics, caps


def make_evaluator(captioner: PrefixCaptioner, data: EvalSet, model: nn.Module, tokenizer: Callable,
                   out_dir: str | Path, num_beams: int = 5, coco: bool = True,
                   metric_options: dict[str, Any] | None = None) -> Callable[[int], dict]:
    """``evaluate(step) -> metrics`` for :func:`tasks.caption_rl.loop.train_rl`; writes
    ``captions-step<step>.json`` (``[{"image_id", "caption"}]``)."""
    out = Path(out_dir)

    def evaluate(step: int) -> dict:
        metrics, caps = evaluate_captioner(captioner, data, model, tokenizer, num_beams, coco=coco,
                                           metric_options=metric_options)
        out.joinpath(f"captions-step{step}.json").write_text(
            json.dumps([{"image_id": i, "caption": c} for i, c in zip(data.ids, caps)]))
        logger.info("eval step %d: t2i R@1 %.3f MRR %.3f, i2t R@1 %.3f, self-BLEU %.1f, vocab %d, length %.1f",
                    step, metrics["t2i/R@1"], metrics["t2i/MRR"], metrics["i2t/R@1"], metrics["self_BLEU-4"],
                    metrics["vocab_size"], metrics["mean_length"])
        return metrics

    return evaluate

