"""Command line: ``python -m tasks.classification.run --config CONFIG.yaml [key.sub=value ...]``.

``data.set_id`` may list several sets separated by ``/`` (official style: ``A/V/R/I/K``); each
gets its own folder ``<run.out_dir>/<set_id>``. Under ``torchrun`` every rank takes a disjoint
shard and rank 0 writes the summary. Rerunning the same command resumes an interrupted run.
"""
from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path


from ..common.config import dump_config, for_set, load_config
from ..common.runner import init_distributed, run
from ..common.clip import resolve_device, run_fingerprint
from .task import DEFAULTS, ClassificationTask

logger = logging.getLogger("tasks.classification")


def split_set_ids(spec: str) -> list[str]:
    """``A/V/R`` -> ``[A, V, R]``; ``world/val`` stays whole; ``C/gaussian_noise/5`` stays whole."""
    parts = spec.split("/")
    if parts[0] in ("world", "C") or len(parts) == 1:
        return [spec] if parts[0] != "world" or len(parts) == 2 else [f"world/{p}" for p in parts[1:]]
    return parts


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--config", help="YAML file of deltas over the defaults (configs/classification/*.yaml)")
    ap.add_argument("overrides", nargs="*", help="key.sub=value overrides, e.g. data.set_id=A adapt.steps=1")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    cfg = load_config(DEFAULTS, args.config, args.overrides)
    init_distributed()
    results = {}
    for set_id in split_set_ids(cfg["data"]["set_id"]):
        one = for_set(cfg, set_id)
        out = Path(cfg["run"]["out_dir"]) / set_id.replace("/", "_")
        out.mkdir(parents=True, exist_ok=True)
        dump_config(one, out / "config.yaml")
        task = ClassificationTask.from_config(one)
        r = one["run"]
        summary = run(task, out, workers=r["workers"], limit=r["limit"], shuffle_seed=r["shuffle_seed"], shuffle=r["shuffle"],
                      allow_online_sharding=r["allow_online_sharding"], device=resolve_device(r["device"]),
                      desc=f"{one['method']} {set_id}", fingerprint=run_fingerprint(one),
                      meta={"method": one["method"], "policy": one["policy"], "set_id": set_id})
        if summary is not None:
            m = summary["metrics"]
            logger.info("%s %s: top1 %.2f top5 %.2f ECE %.2f (%d samples, %d errors)", one["method"], set_id,
                        m.get("top1", float("nan")), m.get("top5", float("nan")), m.get("ece", float("nan")),
                        summary["n"], summary["errors"])
            results[set_id] = summary
    if results:
        Path(cfg["run"]["out_dir"], "results.json").write_text(
            json.dumps({k: {x: v["metrics"].get(x) for x in ("top1", "top5", "ece")} for k, v in results.items()},
                       indent=2))
    return results


if __name__ == "__main__":
    main()
