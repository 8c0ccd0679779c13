"""The main job's cells: one configured method on one world split, through the resumable runner."""
from __future__ import annotations

from pathlib import Path
from typing import Sequence

from ..classification.task import DEFAULTS, ClassificationTask
from ..common.clip import run_fingerprint
from ..common.config import load_config
from ..common.runner import barrier, dist_info, read_records, run, sample_order

__all__ = ["ROOT", "CONFIGS", "ROWS", "PEER_ROWS", "SPLITS", "OOD", "HELD_OUT", "run_cell", "run_row", "summarise",
           "model_overrides", "PLACEHOLDER_NOTE", "placeholder_overrides"]

ROOT = Path(__file__).resolve().parents[2]
CONFIGS = ROOT / "configs" / "world"

# (row label, config file in configs/world/); the first two rows are the zero-shot anchors
ROWS = [
    ("CLIP policy (zero-shot)", "zero-shot.yaml"),
    ("CLIP reward (zero-shot, teacher)", "zero-shot-reward.yaml"),
    ("TPT", "tpt-prompt.yaml"),
    ("RLCF (prompt)", "rlcf-prompt.yaml"),
    ("RLCF (encoder)", "rlcf-tune.yaml"),
]
PEER_ROWS = [
    ("CLIP policy (ensemble)", "zero-shot-ensemble.yaml"),
    ("C-TPT", "ctpt-prompt.yaml"),
    ("ZERO", "zero.yaml"),
    ("TDA (online)", "tda.yaml"),
    ("KD from reward (encoder)", "kd-tune.yaml"),
    ("MTA", "mta.yaml"),
    ("TPS", "tps.yaml"),
    ("DMN-ZS (online)", "dmn.yaml"),
    ("DPE (online)", "dpe.yaml"),
    ("BoostAdapter (online)", "boostadapter.yaml"),
]
SPLITS = ["val", "v2", "sketch", "rendition", "adversarial"]
OOD = ["v2", "sketch", "rendition", "adversarial"]
# shift families that none of the world models' training augmentations imitates (tasks/common/augment.py: crops,
# flips, colour jitter, edge maps, inversion, noise): rendition's textures, pixel art, cartoons and false-colour
# palettes, and adversarial's clutter and occlusion. sketch is the nearest to one (edge maps, inverted).
HELD_OUT = ["rendition", "adversarial"]


def run_cell(cfg: dict, folder: Path, limit: int | None, config: Path, desc: str | None = None,
             leave: bool = True) -> tuple[dict, list[dict]]:
    """Run one configured method on its split: the runner's summary and the records in sample order
    (``({}, [])`` on ranks other than 0).

    A seeded order: a ``limit`` subset is a random (class-balanced in expectation) sample, the same for
    every row. Under torchrun the samples are sharded between the ranks; an online method (state carried
    across the stream) runs whole on rank 0 while the others wait, so its results do not depend on the
    ranks. Records of an older configuration or other world models are moved aside into
    ``old-<date>/`` (never deleted, never mixed in).
    """
    task = ClassificationTask.from_config(cfg)
    rank, size = dist_info()
    kw = dict(workers=0, limit=limit, shuffle_seed=0, desc=desc or f"{config.stem} {folder.name}",
              meta={"config": str(config.relative_to(ROOT))}, leave=leave,
              on_change="restart", fingerprint=run_fingerprint(cfg), batch=cfg["run"].get("batch"))
    if size > 1 and getattr(task, "online", False):
        summary = run(task, folder, shard=False, **kw) if rank == 0 else None
        barrier()
    else:
        summary = run(task, folder, **kw)
    if rank != 0:
        return {}, []
    recs = read_records(folder)
    return summary, [recs[i] for i in sorted(sample_order(len(task), limit, 0))]


def run_row(config: Path, split: str, out: Path, limit: int | None, views: int | None,
            extra: Sequence[str] = (), label: str | None = None) -> tuple[dict, list[dict]]:
    """One (method, split) cell of the table: :func:`run_cell` under ``<out>/<split>``."""
    overrides = [f"data.set_id=world/{split}", f"run.out_dir={out}", "run.device=cpu", "run.workers=0", *extra]
    if limit is not None:
        overrides.append(f"run.limit={limit}")
    if views is not None:
        overrides.append(f"views.n={views}")
    cfg = load_config(DEFAULTS, config, overrides)
    return run_cell(cfg, out / split, limit, config, desc=f"{label or config.stem} on {split}", leave=False)


def model_overrides(cfg_name: str, models: Path) -> list[str]:
    """The world models of one seed (``models``: its folder) for a row's config: the teacher row's policy is the
    reward model itself."""
    which = "reward" if cfg_name == "zero-shot-reward.yaml" else "policy"
    return [f"model.pretrained={models / which}.pt", f"reward.pretrained={models / 'reward.pt'}"]


def summarise(summary: dict) -> dict:
    """A cell of the table from the runner's summary: top-1 and its bootstrap CI over the samples that ran
    (the one rule for errored samples, everywhere: they are counted and reported, and every metric is over
    the ``n - errors`` others)."""
    m = summary["metrics"]
    return {"top1": m["top1"], "ci95": [m["top1_ci95_low"], m["top1_ci95_high"]],
            "n": summary["n"] - summary["errors"], "errors": summary["errors"]}


PLACEHOLDER_NOTE = ("PLACEHOLDER RUN: tiny RANDOM-WEIGHT CLIP models (configs/models/RLCF-Tiny-*.json) on the world's "
                    "images. It checks the whole pipeline end to end; its accuracies are chance-level by construction "
                    "and say nothing about the methods. Run `bash scripts/demo.sh` (without --placeholder) for the trained world models.")


def placeholder_overrides() -> list[str]:
    models = ROOT / "configs" / "models"
    return ["model.arch=RLCF-Tiny-Test", "model.pretrained=null", f"model.config_file={models / 'RLCF-Tiny-Test.json'}",
            "reward.arch=RLCF-Tiny-Reward", "reward.pretrained=null",
            f"reward.config_file={models / 'RLCF-Tiny-Reward.json'}"]
