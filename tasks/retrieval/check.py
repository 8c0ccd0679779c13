"""Pre-flight check used by the retrieval scripts: every checkpoint and the test set of a config exist.

``python -m tasks.retrieval.check --config A.yaml [--config B.yaml ...] [key=value ...]`` exits 1
at once with a message naming each missing path and the expected layout, before any model is built
(the overrides apply to every config).
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import rlcf

from ..common.config import load_config
from .data import build_retrieval_data
from .task import DEFAULTS

__all__ = ["problems", "main"]

WEIGHTS_HINT = ("OpenAI CLIP checkpoints (ViT-B-16.pt, ViT-L-14.pt; for RLCF-S also ViT-L-14-336px.pt and "
                "RN50x64.pt) go under $PRETRAINED/clip/; see pretrained/README.md.")


def _is_path(value: str | None) -> bool:
    return bool(value) and ("/" in value or Path(value).suffix in (".pt", ".pth", ".bin", ".safetensors"))


def problems(cfg: dict) -> list[str]:
    """Human-readable problems of ``cfg`` (empty when everything it needs is there)."""
    out = []
    specs = [("policy model", cfg["model"])]
    if rlcf.get_method(cfg["method"]).needs_reward:
        specs += [("reward model", s) for s in (cfg["reward"]["ensemble"] or [cfg["reward"]])]
    for what, spec in specs:
        if spec["arch"].startswith("world:"):
            continue
        if _is_path(spec.get("pretrained")) and not Path(spec["pretrained"]).is_file():
            out.append(f"{what} checkpoint not found: {spec['pretrained']}. {WEIGHTS_HINT}")
        if spec.get("config_file") and not Path(spec["config_file"]).is_file():
            out.append(f"{what} config not found: {spec['config_file']}")
    try:
        build_retrieval_data(cfg["data"])
    except Exception as e:  # noqa: BLE001 - reported to the user
        out.append(f"dataset {cfg['data']['dataset']}: {e}")
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__)
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
    sys.exit(main())
