"""``python -m tasks.world``: build the embedded world, train (or reuse) its three CLIP models, print
their zero-shot accuracy on every split.

``python -m torch.distributed.run --standalone --nproc_per_node=2 -m tasks.world`` shares the splits and
the models between two 1-thread processes (what ``scripts/demo.sh`` does on 2+ cores).
"""
from __future__ import annotations

import argparse
import time
from typing import Sequence

import torch

from tasks.common.cli import setup_logging
from tasks.common.runner import dist_info, init_distributed

from .models import get_world_models, load_world_clip
from .splits import EVAL_SPLITS, WorldConfig, load_split_tensors
from .train import zero_shot_accuracy


def main(argv: Sequence[str] | None = None) -> dict:
    """CLI: build the world, train/reuse the three models, print the zero-shot table.

    ``python -m torch.distributed.run --standalone --nproc_per_node=2 -m tasks.world`` shares the
    splits and the models between two 1-thread processes (what ``scripts/demo.sh`` does on 2+ cores).
    """

    ap = argparse.ArgumentParser(description="Build the embedded world and train its CLIP models.")
    ap.add_argument("--data-root", default="data/world")
    ap.add_argument("--model-root", default="pretrained/world")
    ap.add_argument("--retrain", action="store_true", help="ignore cached checkpoints")
    ap.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: 2, or 1 per torchrun rank)")
    ap.add_argument("--splits", nargs="*", default=list(EVAL_SPLITS))
    ap.add_argument("--seed", type=int, default=0, help="world-model seed (policy and reward; the filter is shared)")
    ap.add_argument("--verbose", action="store_true", help="third-party INFO logs too")
    args = ap.parse_args(argv)
    setup_logging(args.verbose)
    init_distributed()
    rank, size = dist_info()
    torch.set_num_threads(args.threads or (2 if size == 1 else 1))
    world = WorldConfig()
    t0 = time.time()
    info = get_world_models(root=args.model_root, data_root=args.data_root, retrain=args.retrain, world=world,
                            splits=args.splits, seed=args.seed)
    if rank != 0:
        return {}
    print(f"models ready in {time.time() - t0:.0f}s")
    for which, rec in info.items():
        print(f"  {which:7s} {rec['name']:20s} {rec['path']}  train_seconds={rec.get('train_seconds', 0):.0f}")
    table: dict[str, dict[str, float]] = {}
    for which in ("filter", "policy", "reward"):
        model, _, tok = load_world_clip(which, root=args.model_root, data_root=args.data_root, world=world,
                                        seed=args.seed)
        for split in args.splits:
            imgs, labels, _ = load_split_tensors(split, root=args.data_root, world=world)
            acc = zero_shot_accuracy(model, tok, imgs, labels, world.classnames)
            table.setdefault(which, {})[split] = acc
    ood = ("v2", "sketch", "rendition", "adversarial")
    header = f"{'model':8s}" + "".join(f"{s:>12s}" for s in args.splits) + f"{'OOD avg':>10s}"
    print(header)
    for which, row in table.items():
        avg = sum(row[s] for s in ood if s in row) / max(1, sum(s in row for s in ood))
        row["ood_avg"] = avg
        print(f"{which:8s}" + "".join(f"{100 * row[s]:12.1f}" for s in args.splits) + f"{100 * avg:10.1f}")
    for line in target_checks(table):
        print(line)
    return table


def target_checks(table: dict[str, dict[str, float]]) -> list[str]:
    """The world's targets (the paper's relation of ViT-B/16 policy and ViT-L/14 teacher: ImageNet
    66.7 vs 73.4, OOD 57.2 vs 70.0), checked on the printed accuracies (fractions)."""
    p, r = table.get("policy", {}), table.get("reward", {})
    if "val" not in p or "val" not in r:
        return []
    checks = [("policy clean val in [60, 80] %", 0.60 <= p["val"] <= 0.80, f"{100 * p['val']:.1f}"),
              ("teacher >= policy + 6 on clean val", r["val"] - p["val"] >= 0.06, f"{100 * (r['val'] - p['val']):+.1f}"),
              ("teacher >= policy + 12 on the OOD average", r["ood_avg"] - p["ood_avg"] >= 0.12,
               f"{100 * (r['ood_avg'] - p['ood_avg']):+.1f}")]
    return [f"target: {what}: {'yes' if ok else 'NO'} ({value})" for what, ok, value in checks]


if __name__ == "__main__":
    from tasks.common.cli import run_main

    run_main(main)
