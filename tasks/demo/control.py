"""The main job's negative control: can it tell a working RLCF from a broken one?

RLCF image-encoder tuning runs again with the reward negated (``reward.weight`` = -2.5, the CLIPScore weight 2.5
negated: every CLIPScore, and so every advantage, flips sign) on a seeded subset of each OOD split, with the same
models, views and settings. Its records are paired with the main job's RLCF (encoder) records of the same
samples: the paired difference in top-1 (working minus broken) and its 95% bootstrap CI, and, over every OOD sample
of the main job, the share of predictions that the working RLCF changed from zero-shot. The same pairing on each
sample's probability of the true class (record field ``label_prob``) is the more sensitive measure: every sample
contributes, not only those whose top-1 flipped. ``.ci/check_main_job.py`` asserts that its CI (:func:`control_ci`;
top-1's where records lack the field) is clear of zero and that the share is at least 5 %.
"""
from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np

from ..common.runner import dist_info
from .cells import CONFIGS, run_row

__all__ = ["CONFIG", "NEGATED", "negative_control", "paired_difference", "markdown", "control_ci"]

CONFIG = "rlcf-tune.yaml"
NEGATED = "reward.weight=-2.5"


def paired_difference(a: Sequence[float], b: Sequence[float], n_boot: int = 2000, seed: int = 0) -> dict:
    """Mean of ``a - b`` in points (``a``, ``b``: per-sample correctness, or probabilities of the true class, of
    the same samples) and its percentile bootstrap 95% CI (the same resampled samples for both)."""
    d = (np.asarray(a, float) - np.asarray(b, float)) * 100
    rng = np.random.default_rng(seed)
    boots = d[rng.integers(0, d.size, size=(n_boot, d.size))].mean(1)
    return {"diff": float(d.mean()), "ci95": [float(np.quantile(boots, 0.025)), float(np.quantile(boots, 0.975))],
            "n": int(d.size)}


def negative_control(out: Path, per_row: dict[str, dict[str, list[dict]]], ood: Sequence[str], per_split: int,
                     views: int | None, extra: Sequence[str], label: str = "RLCF (encoder)",
                     zero_label: str = "CLIP policy (zero-shot)") -> dict:
    """Run RLCF (encoder) with the reward negated on ``per_split`` samples of each split of ``ood`` (records under
    ``<out>/control``) and compare it with ``per_row[label]``, the main job's records (rank 0; ``{}`` elsewhere).

    ``extra``: the overrides of the main job's RLCF (encoder) row (its models). Returns ``{"diff", "ci95", "n",
    "working", "broken", "changed", "changed_n"}`` (top-1 of both on the control samples, in %; ``changed``: the
    share of every OOD sample whose prediction the working RLCF changed from zero-shot, in %)."""
    cells = {s: run_row(CONFIGS / CONFIG, s, out / "control", per_split, views, [*extra, NEGATED],
                        f"{label}, reward negated") for s in ood}
    if dist_info()[0] != 0:
        return {}
    working, broken, probs = [], [], []
    for s in ood:
        real = {r["index"]: r for r in per_row[label][s]}
        for r in cells[s][1]:
            w = real.get(r["index"])
            if w is None or "error" in w or "error" in r:
                continue
            working.append(w["pred"] == w["label"])
            broken.append(r["pred"] == r["label"])
            if "label_prob" in w and "label_prob" in r:
                probs.append((w["label_prob"], r["label_prob"]))
    out_stats = paired_difference(working, broken)
    if probs and len(probs) == len(working):   # the more sensitive measure: the true class's probability
        a, b = zip(*probs)
        out_stats["prob"] = {**paired_difference(a, b), "working": float(100 * np.mean(a)),
                             "broken": float(100 * np.mean(b))}
    pairs = [(a, b) for s in ood for a, b in zip(per_row[label][s], per_row[zero_label][s])
             if "error" not in a and "error" not in b]
    out_stats.update(working=float(100 * np.mean(working)), broken=float(100 * np.mean(broken)),
                     changed=float(100 * np.mean([a["pred"] != b["pred"] for a, b in pairs])), changed_n=len(pairs),
                     per_split=per_split, config=CONFIG, override=NEGATED)
    return out_stats


def markdown(stats: dict) -> str:
    """The control's lines under the table."""
    lo, hi = stats["ci95"]
    text = (f"Negative control ({stats['n']} OOD samples, {stats['per_split']} per split): RLCF (encoder) top-1 "
            f"{stats['working']:.1f} vs the same with the reward negated {stats['broken']:.1f}: "
            f"{stats['diff']:+.1f} ({lo:+.1f} to {hi:+.1f}).")
    prob = stats.get("prob")
    if prob:
        text += (f" Mean probability of the true class {prob['working']:.1f} vs {prob['broken']:.1f}: "
                 f"{prob['diff']:+.2f} ({prob['ci95'][0]:+.2f} to {prob['ci95'][1]:+.2f}).")
    verdict = "told apart" if control_ci(stats)[1][0] > 0 else "NOT told apart"
    return (f"{text} Working and broken RLCF: {verdict}. The working RLCF changed {stats['changed']:.1f} % of the "
            f"{stats['changed_n']} OOD predictions from zero-shot.\n")


def control_ci(stats: dict) -> tuple[str, list[float]]:
    """The CI the main job's check reads: ``(measure, [lo, hi])``: the paired difference in the true class's
    probability where the records have it (every sample contributes, not only the flipped ones), else in top-1."""
    prob = stats.get("prob")
    return ("true-class probability", prob["ci95"]) if prob else ("top-1", stats["ci95"])
