"""``python -m tasks.caption_rl.pretrain_disc --config configs/caption_rl/gt_coco.yaml [key.sub=value ...]``: the
discriminator pre-training stage of the ground-truth-guided recipe as its own command
(:mod:`tasks.caption_rl.disc_pretraining`); writes ``gt.disc_pretrain.out`` (default
``<run.out_dir>/discriminator-pretrained.pt``).
"""
from __future__ import annotations

import argparse
import json
import logging
from typing import Sequence

from .disc_pretraining import DiscPretrainConfig, pretrain_discriminator  # noqa: F401  (re-exported)

logger = logging.getLogger(__name__)

__all__ = ["DiscPretrainConfig", "pretrain_discriminator", "main"]


def main(argv: Sequence[str] | None = None) -> dict:
    """CLI (see the module docstring): pre-train and save the discriminator of a ``gt_contrastive`` config."""
    from .train import load_rl_config, run_disc_pretraining, setup

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--config", help="YAML file of deltas over the defaults (configs/caption_rl/gt_coco.yaml)")
    ap.add_argument("overrides", nargs="*", help="key.sub=value overrides, e.g. gt.disc_pretrain.steps=500")
    args = ap.parse_args(argv)
    from ..common.cli import setup_logging

    setup_logging()   # project INFO, third-party WARNING
    cfg = load_rl_config(args.config, args.overrides, recipe="gt_contrastive")
    if int(cfg["gt"]["disc_pretrain"]["steps"]) <= 0:
        raise ValueError("gt.disc_pretrain.steps must be > 0 for pre-training (e.g. gt.disc_pretrain.steps=2000)")
    s = setup(cfg, with_eval=False, with_recipe=False)
    path, history = run_disc_pretraining(s, cfg, force=True)
    out = {"path": str(path), "steps": len(history), "final": history[-1] if history else None}
    logger.info("discriminator pre-training done: %s", json.dumps(out))
    return out


if __name__ == "__main__":
    from tasks.common.cli import run_main

    run_main(main)
