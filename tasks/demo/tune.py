"""``python -m tasks.demo --tune``: each method's learning rate, chosen on the world's dev splits only.

Every learning rate of :data:`TUNE_GRID` runs on a seeded subset of clean ``dev`` and of shifted ``dev_shift``
(silhouettes, halftone prints, warped photos: shift families that no test split and no training augmentation
uses). The rule, the same for every method and written in each ``configs/world/*.yaml``: the best mean top-1 of
the two dev splits; an lr within :data:`TIE` points of the best loses to a smaller one (fewer changes for the
same result). No test split is read.
"""
from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Sequence

from ..classification.task import DEFAULTS
from ..common.config import load_config
from .cells import CONFIGS, run_cell, summarise

__all__ = ["TUNE_GRID", "DEV_SPLITS", "TIE", "choose", "tune"]

logger = logging.getLogger("tasks.demo")

TUNE_GRID = {   # the world's text towers have CLIP's token scale (std 0.02): the prompt grids bracket the official
    # 5e-3 / 7e-3; the encoder grids bracket the official 1e-5
    "tpt-prompt.yaml": [5e-4, 1e-3, 2e-3, 5e-3, 7e-3, 1e-2, 2e-2, 5e-2],
    "ctpt-prompt.yaml": [5e-4, 1e-3, 2e-3, 5e-3, 7e-3, 1e-2, 2e-2, 5e-2],
    "rlcf-prompt.yaml": [5e-4, 1e-3, 2e-3, 5e-3, 7e-3, 1e-2, 2e-2, 5e-2],
    "rlcf-tune.yaml": [3e-6, 1e-5, 3e-5, 1e-4, 3e-4, 1e-3, 3e-3],
    "kd-tune.yaml": [3e-6, 1e-5, 3e-5, 1e-4, 3e-4, 1e-3, 3e-3],
    # TPS shifts unit-norm class prototypes (official 5e-3 / 1e-3); DPE's residuals likewise (official 5e-5 ... 6e-4)
    "tps.yaml": [5e-4, 1e-3, 2e-3, 5e-3, 7e-3, 1e-2, 2e-2, 5e-2],
    "dpe.yaml": [5e-5, 1e-4, 2e-4, 3e-4, 6e-4, 1e-3, 2e-3, 5e-3],
}
DEV_SPLITS = ("dev", "dev_shift")
TIE = 0.5


def choose(scores: dict[float, dict[str, float]]) -> float:
    """The rule: ``scores`` ``{lr: {dev split: top-1}}`` -> the lr of the best mean over :data:`DEV_SPLITS`, the
    smallest lr within :data:`TIE` points of it."""
    mean = {lr: sum(s[d] for d in DEV_SPLITS) / len(DEV_SPLITS) for lr, s in scores.items()}
    best = max(mean.values())
    return min(lr for lr, m in mean.items() if m >= best - TIE)


def tune(out: Path, limit: int, views: int | None, only: Sequence[str] = (), extra: Sequence[str] = ()) -> dict:
    """Dev top-1 of zero-shot and of every lr of :data:`TUNE_GRID` on each of :data:`DEV_SPLITS` (``limit``
    samples each), and the lr the rule picks per config; printed, and written to ``<out>/tune/tune.json`` (rank 0).
    ``only``: config stems to tune (default: every one); ``extra``: overrides of every cell (the models)."""
    unknown = sorted(set(only) - {Path(c).stem for c in TUNE_GRID})
    if unknown:
        raise SystemExit(f"--tune-only: unknown config(s) {unknown}; choose from {[Path(c).stem for c in TUNE_GRID]}")
    grids = {c: lrs for c, lrs in TUNE_GRID.items() if not only or Path(c).stem in only}
    cells = [("zero-shot", "zero-shot.yaml", None)] + [(Path(c).stem, c, lr) for c, lrs in grids.items() for lr in lrs]
    table: dict[str, dict] = {}
    for stem, cfg_name, lr in cells:
        scores = {}
        for split in DEV_SPLITS:
            overrides = [f"data.set_id=world/{split}", "run.device=cpu", *extra] + ([f"views.n={views}"] if views else [])
            overrides += [f"adapt.lr={lr}"] if lr is not None else []
            name = stem if lr is None else f"{stem}-lr{lr:g}"
            summary, _ = run_cell(load_config(DEFAULTS, CONFIGS / cfg_name, overrides), out / "tune" / name / split,
                                  limit, CONFIGS / cfg_name, desc=f"tune {name} on {split}", leave=False)
            if summary:   # rank 0
                scores[split] = summarise(summary)["top1"]
        if scores:
            table.setdefault(stem, {})[lr] = scores
            mean = sum(scores.values()) / len(scores)
            print(f"{stem} lr {lr if lr is not None else '-'}: " + ", ".join(f"{s} {v:.1f}" for s, v in scores.items())
                  + f", mean {mean:.1f}", flush=True)
    if not table:
        return {}
    chosen = {stem: choose(scores) for stem, scores in table.items() if stem != "zero-shot"}
    for stem, lr in chosen.items():
        print(f"{stem}: lr {lr:g} (the best mean of {' + '.join(DEV_SPLITS)}; within {TIE} points the smaller lr)")
    result = {"limit": limit, "views": views, "rule": f"best mean of {'+'.join(DEV_SPLITS)}, ties within {TIE}: smaller",
              "scores": {stem: {str(lr): s for lr, s in scores.items()} for stem, scores in table.items()},
              "chosen": chosen}
    (out / "tune").mkdir(parents=True, exist_ok=True)
    (out / "tune" / "tune.json").write_text(json.dumps(result, indent=2))
    return result
