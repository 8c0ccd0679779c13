"""Command line: ``python -m tasks.retrieval.run --config CONFIG.yaml [key.sub=value ...]``.

``direction`` is ``t2i``, ``i2t`` or both (``t2i/i2t``, run in that order, as the official
scripts); each direction gets its own folder ``<run.out_dir>/<dataset>_<direction>`` with the
per-query records, ``summary.json`` and ``summary.md``. ``<run.out_dir>/results.json`` gathers the
recalls of every direction recorded in that folder for the same method (``r_mean`` once both
directions are there, e.g. after the two official runs t2i then i2t). Under ``torchrun`` every rank
takes a disjoint shard of the queries (and computes the gallery features itself); rank 0 writes the
summary. Rerunning the same command resumes an interrupted run.
"""
from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path


from ..common.config import dump_config, load_config
from ..common.runner import init_distributed, run
from .data import build_retrieval_data, dataset_tag
from .metrics import combine_directions
from ..common.clip import resolve_device, run_fingerprint
from .task import DEFAULTS, DIRECTIONS, RetrievalTask

logger = logging.getLogger("tasks.retrieval")

__all__ = ["main", "split_directions", "collect_results"]


def split_directions(spec: str) -> list[str]:
    """``t2i/i2t`` -> ``[t2i, i2t]``; ``both`` -> ``[t2i, i2t]``."""
    parts = ["t2i", "i2t"] if spec == "both" else [p.strip() for p in spec.split("/") if p.strip()]
    bad = [p for p in parts if p not in DIRECTIONS]
    if bad or not parts:
        raise ValueError(f"direction must be t2i, i2t, t2i/i2t or both; got '{spec}'")
    return parts


def collect_results(out_dir: str | Path, tag: str, method: str) -> dict:
    """Metrics of ``<out_dir>/<tag>_{i2t,t2i}/summary.json`` recorded by ``method``, merged
    (``r_mean`` when both directions are there)."""
    parts, sources = [], {}
    for d in DIRECTIONS:
        path = Path(out_dir) / f"{tag}_{d}" / "summary.json"
        if not path.is_file():
            continue
        s = json.loads(path.read_text())
        if s.get("method") != method:
            logger.warning("ignoring %s: recorded by method '%s', not '%s'", path, s.get("method"), method)
            continue
        keep = {k: v for k, v in s["metrics"].items() if k.startswith(("txt_", "img_"))}
        parts.append(keep)
        sources[d] = {"folder": str(path.parent), "queries": s["n"], "errors": s["errors"]}
    return {"method": method, **combine_directions(*parts), "runs": sources}


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--config", help="YAML file of deltas over the defaults (configs/retrieval/*.yaml)")
    ap.add_argument("overrides", nargs="*", help="key.sub=value overrides, e.g. direction=i2t adapt.steps=1")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    cfg = load_config(DEFAULTS, args.config, args.overrides)
    directions = split_directions(cfg["direction"])
    init_distributed()
    tag = dataset_tag(cfg["data"]["dataset"])
    data = build_retrieval_data(cfg["data"])
    r = cfg["run"]
    results = {}
    for direction in directions:
        one = {**cfg, "direction": direction}
        out = Path(r["out_dir"]) / f"{tag}_{direction}"
        out.mkdir(parents=True, exist_ok=True)
        dump_config(one, out / "config.yaml")
        task = RetrievalTask.from_config(one, data=data)
        summary = run(task, out, workers=r["workers"], limit=r["limit"], shuffle_seed=r["shuffle_seed"],
                      allow_online_sharding=r["allow_online_sharding"], device=resolve_device(r["device"]),
                      desc=f"{one['method']} {tag} {direction}",
                      fingerprint=run_fingerprint(one),
                      meta={"method": one["method"], "direction": direction, "dataset": tag})
        if summary is not None:
            m, p = summary["metrics"], "txt" if direction == "i2t" else "img"
            logger.info("%s %s %s: R@1 %.2f R@5 %.2f R@10 %.2f (%d queries, %d errors)", one["method"], tag, direction,
                        m.get(f"{p}_r1", float("nan")), m.get(f"{p}_r5", float("nan")),
                        m.get(f"{p}_r10", float("nan")), summary["n"], summary["errors"])
            results[direction] = summary
    if results:
        combined = collect_results(r["out_dir"], tag, cfg["method"])
        path = Path(r["out_dir"]) / "results.json"
        everything = json.loads(path.read_text()) if path.is_file() else {}
        everything[tag] = combined
        path.write_text(json.dumps(everything, indent=2))
        logger.info("results for %s written to %s", tag, path)
    return results


if __name__ == "__main__":
    main()
