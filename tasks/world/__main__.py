"""``python -m tasks.world``: build the embedded world, train (or reuse) its three CLIP models, print
their zero-shot accuracy on every split.

``python -m torch.distributed.run --standalone --nproc_per_node=2 -m tasks.world`` shares the splits and
the models between two 1-thread processes (what ``scripts/demo.sh`` does on 2+ cores).
"""
from __future__ import annotations

import argparse
import logging
import time
from typing import Sequence

import torch

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
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    init_distributed()
    rank, size = dist_info()
    torch.set_num_threads(args.threads or (2 if size == 1 else 1))
    world = WorldConfig()
    t0 = time.time()
    info = get_world_models(root=args.model_root, data_root=args.data_root, retrain=args.retrain, world=world,
                            splits=args.splits)
    if rank != 0:
        return {}
    print(f"models ready in {time.time() - t0:.0f}s")
    for which, rec in info.items():
        print(f"  {which:7s} {rec['name']:20s} {rec['path']}  train_seconds={rec.get('train_seconds', 0):.0f}")
    table: dict[str, dict[str, float]] = {}
    for which in ("filter", "policy", "reward"):
        model, _, tok = load_world_clip(which, root=args.model_root, data_root=args.data_root, world=world)
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
    return table


if __name__ == "__main__":
    main()
