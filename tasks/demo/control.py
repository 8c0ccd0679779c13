"""The main job's negative control: can it tell a working RLCF from a broken one?

RLCF image-encoder tuning runs again with the reward negated (``reward.weight`` = -2.5: every CLIPScore, and so
every advantage, flips sign) on a seeded subset of each OOD split, with the same models, views and settings. Its
records are paired with the main job's RLCF (encoder) records of the same samples: the paired difference in top-1
(working minus broken) and its 95% bootstrap CI, and, over every OOD sample of the main job, the share of
predictions that the working RLCF changed from zero-shot. ``.ci/check_main_job.py`` asserts that the CI is clear
of zero and that the share is at least 5 %.
"""
from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np

from ..common.runner import dist_info
from .cells import CONFIGS, run_row

__all__ = ["CONFIG", "NEGATED", "negative_control", "paired_difference", "markdown"]

CONFIG = "rlcf-tune.yaml"
NEGATED = "reward.weight=-2.5"


def paired_difference(a: Sequence[bool], b: Sequence[bool], n_boot: int = 2000, seed: int = 0) -> dict:
    """Mean of ``a - b`` in points (``a``, ``b``: per-sample correctness of the same samples) and its percentile
    bootstrap 95% CI (the same resampled samples for both)."""
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
    working, broken = [], []
    for s in ood:
        real = {r["index"]: r for r in per_row[label][s]}
        for r in cells[s][1]:
            w = real.get(r["index"])
            if w is None or "error" in w or "error" in r:
                continue
            working.append(w["pred"] == w["label"])
            broken.append(r["pred"] == r["label"])
    out_stats = paired_difference(working, broken)
    pairs = [(a, b) for s in ood for a, b in zip(per_row[label][s], per_row[zero_label][s])
             if "error" not in a and "error" not in b]
    out_stats.update(working=float(100 * np.mean(working)), broken=float(100 * np.mean(broken)),
                     changed=float(100 * np.mean([a["pred"] != b["pred"] for a, b in pairs])), changed_n=len(pairs),
                     per_split=per_split, config=CONFIG, override=NEGATED)
    return out_stats


def markdown(stats: dict) -> str:
    """The control's lines under the table."""
    lo, hi = stats["ci95"]
    verdict = "told apart" if lo > 0 else "NOT told apart"
    return (f"Negative control ({stats['n']} OOD samples, {stats['per_split']} per split): RLCF (encoder) "
            f"{stats['working']:.1f} vs the same with the reward negated {stats['broken']:.1f}: "
            f"{stats['diff']:+.1f} ({lo:+.1f} to {hi:+.1f}), {verdict}. The working RLCF changed "
            f"{stats['changed']:.1f} % of the {stats['changed_n']} OOD predictions from zero-shot.\n")
