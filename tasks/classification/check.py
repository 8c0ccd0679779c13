"""Pre-flight check used by the scripts: every checkpoint and dataset of a config exists.

``python -m tasks.classification.check --config C.yaml [key=value ...]`` exits 1 at once with a
message naming each missing path and the expected layout, before any model is built: each dataset is
built by its loader (which checks that every listed image exists) and its first image and a few random
ones are opened as the run will open them (:func:`tasks.common.data.probe_samples`).
"""
from __future__ import annotations

import argparse
from pathlib import Path

from ..common.clip import checkpoint_problems
from ..common.config import for_set, load_config
from ..common.data import probe_samples
from ..common.providers import is_provider
from .run import preflight, split_set_ids
from .task import DEFAULTS


def problems(cfg: dict) -> list[str]:
    """Human-readable problems of ``cfg`` (empty when everything it needs is there)."""
    out = checkpoint_problems(cfg)
    if cfg["prompt"]["coop"] and not Path(cfg["prompt"]["coop"]).is_file():
        out.append(f"CoOp prompt checkpoint not found: {cfg['prompt']['coop']} (the official "
                   "coop_16shots_nctx4_cscFalse_ctpend_vitb16_seed1 weights; or set prompt.coop=null for plain RLCF)")
    out += [p for p in preflight(cfg) if p not in out]   # damaged weight files
    from .datasets import build_dataset

    for set_id in split_set_ids(cfg["data"]["set_id"]):
        if is_provider(set_id.split("/", 1)[0].lower()):
            continue   # a provider builds its splits on first use
        d = for_set(cfg, set_id)["data"]
        try:
            ds = build_dataset(set_id, d["root"], classnames_source=d["classnames"], templates=d["templates"],
                               strict=d["strict"], **({"file": d["file"]} if d.get("file") else {}))
        except Exception as e:  # noqa: BLE001 - reported to the user
            out.append(f"dataset {set_id}: {e}")
            continue
        out += [f"dataset {set_id}: image {line}" for line in probe_samples(len(ds), ds.load, ds.sample_id)]
    return out


def main(argv: list[str] | None = None) -> int:
    from ..common.cli import config_epilog, report_problems
    from .task import meanings

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter,
                                 epilog=config_epilog(DEFAULTS, meanings()))
    ap.add_argument("--config")
    ap.add_argument("overrides", nargs="*")
    args = ap.parse_args(argv)
    return report_problems(lambda: problems(load_config(DEFAULTS, args.config, args.overrides)))


if __name__ == "__main__":
    from tasks.common.cli import run_main

    run_main(main)
