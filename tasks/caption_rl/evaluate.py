"""Evaluation of an RL-trained captioner: one caption per test image (the evaluation decoding of the recipe's
config, e.g. VLRM's beam 5 / no repeated 2-grams / 4-60 tokens), then distinctiveness (CLIP Recall t2i, i2t
retrieval), collapse (Self-BLEU, vocabulary, length) and, with references, the COCO n-gram metrics
(:func:`tasks.captioning.metrics.coco_metrics`). The presets of the papers are in :mod:`.presets`."""
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

from .decoding import DecodingConfig, resolve_decoding
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
def generate_captions(captioner: PrefixCaptioner, feats: Tensor, decoding: DecodingConfig | str | int = "captioner",
                      batch_size: int = 64, lowercase: bool = True) -> list[str]:
    """One caption per row of ``feats [N, D]`` with ``decoding`` (a config, a preset name, or a beam width: 1 is
    greedy)."""
    if isinstance(decoding, int):
        decoding = DecodingConfig(mode="beam" if decoding > 1 else "greedy", num_beams=max(1, decoding))
    decoding = resolve_decoding(decoding)
    out: list[str] = []
    for s in range(0, feats.shape[0], batch_size):
        r = generate_rollout(captioner, feats[s:s + batch_size].to(captioner.device), decoding)
        out += [t.lower() if lowercase else t for t in r.texts]
    return out


def evaluate_captioner(captioner: PrefixCaptioner, data: EvalSet, model: nn.Module, tokenizer: Callable,
                       decoding: DecodingConfig | str | int = "captioner", coco: bool = True,
                       metric_options: dict[str, Any] | None = None, self_bleu_n: int | None = None,
                       strip_periods: bool = False) -> tuple[dict[str, Any], list[str]]:
    """``(metrics, captions)``: :func:`distinctiveness_metrics` plus COCO metrics when references exist.

    Args:
        decoding: the evaluation decoding (the recipe config's ``eval.decoding``).
        self_bleu_n, strip_periods: Chaffin et al.'s Self-BLEU-5 and period stripping (``eval.preset=chaffin``).
    """
    was_training = captioner.training
    captioner.eval()
    try:
        caps = generate_captions(captioner, data.prefix_feats, decoding)
    finally:
        captioner.train(was_training)
    metrics: dict[str, Any] = distinctiveness_metrics(caps, data.eval_feats, model, tokenizer,
                                                      self_bleu_n=self_bleu_n, strip_periods=strip_periods)
    if coco and all(data.references):
        opts = {"tokenizer": "auto", "meteor": "auto", "spice": False, **(metric_options or {})}
        refs = {str(i): r for i, r in enumerate(data.references)}
        cands = {str(i): c for i, c in enumerate(caps)}
        metrics.update({k: v for k, v in coco_metrics(refs, cands, **opts).items() if k != "skipped"})
    return metrics, caps


def make_evaluator(captioner: PrefixCaptioner, data: EvalSet, model: nn.Module, tokenizer: Callable,
                   out_dir: str | Path, decoding: DecodingConfig | str | int = "captioner", coco: bool = True,
                   metric_options: dict[str, Any] | None = None, self_bleu_n: int | None = None,
                   strip_periods: bool = False) -> Callable[[int], dict]:
    """``evaluate(step) -> metrics`` for :func:`tasks.caption_rl.loop.train_rl`; writes
    ``captions-step<step>.json`` (``[{"image_id", "caption"}]``)."""
    out = Path(out_dir)

    def evaluate(step: int) -> dict:
        metrics, caps = evaluate_captioner(captioner, data, model, tokenizer, decoding, coco, metric_options,
                                           self_bleu_n, strip_periods)
        out.joinpath(f"captions-step{step}.json").write_text(
            json.dumps([{"image_id": i, "caption": c} for i, c in zip(data.ids, caps)]))
        logger.info("eval step %d: t2i R@1 %.3f MRR %.3f, i2t R@1 %.3f, self-BLEU %.1f, vocab %d, length %.1f",
                    step, metrics["t2i/R@1"], metrics["t2i/MRR"], metrics["i2t/R@1"], metrics["self_BLEU-4"],
                    metrics["vocab_size"], metrics["mean_length"])
        return metrics

    return evaluate
