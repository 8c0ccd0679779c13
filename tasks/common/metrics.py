"""Metrics every task's report shares: expected calibration error and bootstrap confidence intervals."""
from __future__ import annotations

from typing import Sequence

import numpy as np

__all__ = ["expected_calibration_error", "bootstrap_ci"]


def expected_calibration_error(confidence: Sequence[float], correct: Sequence[bool], n_bins: int = 20) -> float:
    """ECE with ``n_bins`` equal-width confidence bins (20 bins, as C-TPT reports it).

    ``sum_b |B_b| / N * |acc(B_b) - conf(B_b)|`` with bins ``(lo, hi]`` (the first includes 0).
    """
    conf = np.asarray(confidence, dtype=np.float64)
    corr = np.asarray(correct, dtype=np.float64)
    if conf.size == 0:
        return float("nan")
    edges = np.linspace(0.0, 1.0, n_bins + 1)
    ids = np.clip(np.searchsorted(edges, conf, side="left") - 1, 0, n_bins - 1)
    ece = 0.0
    for b in range(n_bins):
        m = ids == b
        if m.any():
            ece += m.mean() * abs(corr[m].mean() - conf[m].mean())
    return float(ece)


def bootstrap_ci(values: Sequence[float], n_boot: int = 1000, alpha: float = 0.05, seed: int = 0) -> tuple[float, float]:
    """Percentile bootstrap confidence interval of the mean of ``values``."""
    v = np.asarray(values, dtype=np.float64)
    if v.size == 0:
        return float("nan"), float("nan")
    rng = np.random.default_rng(seed)
    means = v[rng.integers(0, v.size, size=(n_boot, v.size))].mean(1)
    return float(np.quantile(means, alpha / 2)), float(np.quantile(means, 1 - alpha / 2))
