"""Pre-flight check of caption RL training (``scripts/train_rl_*.sh`` call it before any model is loaded).

``python -m tasks.caption_rl.check --config configs/caption_rl/X.yaml [key.sub=value ...]`` opens the training
annotations (``data.annotations``, split ``data.split``) and, when the run evaluates, the evaluation ones
(``eval.*``), and resolves and opens the first and a few random images of each under its images root with the
loaders' own rule (:func:`tasks.captioning.check.data_problems`). Each problem is one ``ERROR:`` line naming the
path; the exit code is 1 when there is any.
"""
from __future__ import annotations

import argparse
from typing import Sequence

from tasks.captioning.check import data_problems

__all__ = ["problems", "main"]


def problems(cfg: dict) -> list[str]:
    """Problems of the data of a caption RL config (:func:`tasks.caption_rl.config.defaults` keys)."""
    d, e = cfg["data"], cfg["eval"]
    out = data_problems(d["annotations"], d["images_root"], d["split"], what="training data")
    if e["enabled"]:
        out += data_problems(e["annotations"], e["images_root"], e["split"], what="evaluation data")
    return out


def main(argv: Sequence[str] | None = None) -> int:
    from tasks.common.cli import report_problems

    from .config import load_rl_config

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--config")
    ap.add_argument("overrides", nargs="*")
    args = ap.parse_args(argv)
    return report_problems(lambda: problems(load_rl_config(args.config, args.overrides)))


if __name__ == "__main__":
    from tasks.common.cli import run_main

    run_main(main)
