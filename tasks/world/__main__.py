"""``python -m tasks.world``: build the embedded world, train (or reuse) its three CLIP models, print the
world's calibration report (:mod:`tasks.world.calibration`): zero-shot accuracy of policy and teacher on every
split, the headroom measurements of ``rlcf diagnose``, and the world's targets.

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

from .calibration import measure, report
from .models import get_world_models, load_world_clip
from .splits import EVAL_SPLITS, WorldConfig


def main(argv: Sequence[str] | None = None) -> dict:
    """CLI: build the world, train/reuse the three models, print the calibration report.

    ``python -m torch.distributed.run --standalone --nproc_per_node=2 -m tasks.world`` shares the
    splits and the models between two 1-thread processes (what ``scripts/demo.sh`` does on 2+ cores).
    """

    from ..common.cli import HelpFormatter

    ap = argparse.ArgumentParser(description="Build the embedded world and train its CLIP models.",
                                 formatter_class=HelpFormatter)
    ap.add_argument("--data-root", default="data/world", help="where the world's images are written")
    ap.add_argument("--model-root", default="pretrained/world", help="where the world's CLIPs are cached")
    ap.add_argument("--retrain", action="store_true", help="ignore cached checkpoints")
    ap.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: 2, or 1 per torchrun rank)")
    ap.add_argument("--splits", nargs="*", default=list(EVAL_SPLITS), help="evaluation splits to build")
    ap.add_argument("--seed", type=int, default=0, help="world-model seed (policy and reward; the filter is shared)")
    ap.add_argument("--limit", type=int, default=200, help="samples per split of the headroom rows (views)")
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
    policy, teacher = ((m, tok) for m, _, tok in (load_world_clip(w, root=args.model_root, data_root=args.data_root,
                                                                   world=world, seed=args.seed)
                                                   for w in ("policy", "reward")))
    table = measure(policy, teacher, args.splits, args.data_root, world, limit=args.limit)
    print(f"\nThe world's calibration, seed {args.seed} (no adaptation; headroom rows on {args.limit} seeded samples "
          "per split, 32 views, K = 3, the 10 % most confident views):\n")
    print(report(table))
    return table


if __name__ == "__main__":
    from tasks.common.cli import run_main

    run_main(main)
