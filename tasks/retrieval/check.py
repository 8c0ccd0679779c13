"""Pre-flight check used by the retrieval scripts: every checkpoint and the test set of a config exist.

``python -m tasks.retrieval.check --config A.yaml [--config B.yaml ...] [key=value ...]`` exits 1
at once with a message naming each missing path and the expected layout, before any model is built
(the overrides apply to every config): the test set is read by its loader (which resolves every gallery
image, trying the image roots of :data:`tasks.retrieval.data.DATASETS`) and its first image and a few
random ones are opened as the run will open them (:func:`tasks.common.data.probe_samples`).
"""
from __future__ import annotations

import argparse
import sys

from ..common.clip import checkpoint_problems
from ..common.config import load_config
from ..common.data import probe_samples
from .data import build_retrieval_data
from .task import DEFAULTS

__all__ = ["problems", "main"]


def problems(cfg: dict) -> list[str]:
    """Human-readable problems of ``cfg`` (empty when everything it needs is there)."""
    out = checkpoint_problems(cfg)
    name = cfg["data"]["dataset"]
    try:
        data = build_retrieval_data(cfg["data"])
    except Exception as e:  # noqa: BLE001 - reported to the user
        return out + [f"dataset {name}: {e}"]
    return out + [f"dataset {name}: image {line}" for line in
                  probe_samples(data.n_images, data.load_image, lambda i: data.image_ids[i])]


def main(argv: list[str] | None = None) -> int:
    from ..common.cli import config_epilog
    from .task import meanings

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter,
                                 epilog=config_epilog(DEFAULTS, meanings()))
    ap.add_argument("--config", action="append", default=[], help="config file (repeatable)")
    ap.add_argument("overrides", nargs="*")
    args = ap.parse_args(argv)
    found: list[str] = []
    for config in args.config or [None]:
        for p in problems(load_config(DEFAULTS, config, args.overrides)):
            if p not in found:
                found.append(p)
    for p in found:
        print(f"ERROR: {p}", file=sys.stderr)
    return 1 if found else 0


if __name__ == "__main__":
    from tasks.common.cli import run_main

    run_main(main)
