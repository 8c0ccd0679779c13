"""Classification metrics over per-sample records: top-1/5, ECE, per-class accuracy, bootstrap CI."""
from __future__ import annotations

from typing import Sequence

import numpy as np

from ..common.metrics import bootstrap_ci, expected_calibration_error

__all__ = ["classification_metrics"]


def classification_metrics(records: Sequence[dict], num_classes: int | None = None) -> dict:
    """Metrics from records with ``label``, ``pred``, ``top5`` and ``confidence`` (percent for accuracies)."""
    labels = np.array([r["label"] for r in records])
    preds = np.array([r["pred"] for r in records])
    correct = labels == preds
    top5 = np.array([r["label"] in r["top5"] for r in records])
    per_class = {}
    for c in np.unique(labels):
        per_class[int(c)] = float(correct[labels == c].mean() * 100)
    lo, hi = bootstrap_ci(correct.astype(float) * 100)
    out = {
        "top1": float(correct.mean() * 100),
        "top1_ci95_low": lo,
        "top1_ci95_high": hi,
        "top5": float(top5.mean() * 100),
        "ece": float(expected_calibration_error([r["confidence"] for r in records], correct) * 100),
        "mean_per_class": float(np.mean(list(per_class.values()))),
        "per_class": per_class,
        "nan_fallbacks": int(sum("nan_fallback" in r.get("flags", []) for r in records)),
    }
    return out
