"""Pre-flight check used by the scripts: every checkpoint and dataset of a config exists.

``python -m tasks.classification.check --config C.yaml [key=value ...]`` exits 1 at once with a
message naming each missing path and the expected layout, before any model is built.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from ..common.config import load_config
from .run import split_set_ids
from .task import DEFAULTS

WEIGHTS_HINT = ("OpenAI CLIP checkpoints (e.g. ViT-B-16.pt, ViT-L-14.pt) go under $PRETRAINED/clip/; "
                "see pretrained/README.md for where to get them.")


def _is_path(value: str | None) -> bool:
    return bool(value) and ("/" in value or Path(value).suffix in (".pt", ".pth", ".bin", ".safetensors"))


def problems(cfg: dict) -> list[str]:
    out = []
    specs = [("policy model", cfg["model"])]
    if cfg["method"] not in ("zeroshot", "tpt", "ctpt", "zero", "tda"):
        specs += [("reward model", s) for s in (cfg["reward"]["ensemble"] or [cfg["reward"]])]
    for what, spec in specs:
        if spec["arch"].startswith("world:"):
            continue
        if _is_path(spec.get("pretrained")) and not Path(spec["pretrained"]).is_file():
            out.append(f"{what} checkpoint not found: {spec['pretrained']}. {WEIGHTS_HINT}")
        if spec.get("config_file") and not Path(spec["config_file"]).is_file():
            out.append(f"{what} config not found: {spec['config_file']}")
    if cfg["prompt"]["coop"] and not Path(cfg["prompt"]["coop"]).is_file():
        out.append(f"CoOp prompt checkpoint not found: {cfg['prompt']['coop']} (the official "
                   "coop_16shots_nctx4_cscFalse_ctpend_vitb16_seed1 weights; or set prompt.coop=null for plain RLCF)")
    from .datasets import build_dataset

    for set_id in split_set_ids(cfg["data"]["set_id"]):
        if set_id.startswith("world/"):
            continue
        try:
            build_dataset(set_id, cfg["data"]["root"], classnames_source=cfg["data"]["classnames"],
                          strict=cfg["data"]["strict"])
        except Exception as e:  # noqa: BLE001 - reported to the user
            out.append(f"dataset {set_id}: {e}")
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--config")
    ap.add_argument("overrides", nargs="*")
    args = ap.parse_args(argv)
    found = problems(load_config(DEFAULTS, args.config, args.overrides))
    for p in found:
        print(f"ERROR: {p}", file=sys.stderr)
    return 1 if found else 0


if __name__ == "__main__":
    sys.exit(main())
