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

import json
import logging
from pathlib import Path
from typing import Sequence

from ..common import cli
from ..common.config import ConfigValueError
from .. import methods
from .data import build_retrieval_data, dataset_tag
from .metrics import combine_directions
from .task import DEFAULTS, DIRECTIONS, RetrievalTask, meanings

logger = logging.getLogger("tasks.retrieval")

__all__ = ["main", "split_directions", "collect_results"]


def split_directions(spec: str) -> list[str]:
    """``t2i/i2t`` -> ``[t2i, i2t]``; ``both`` -> ``[t2i, i2t]``."""
    parts = ["t2i", "i2t"] if spec == "both" else [p.strip() for p in spec.split("/") if p.strip()]
    bad = [p for p in parts if p not in DIRECTIONS]
    if bad or not parts:
        raise ConfigValueError(f"direction must be t2i, i2t, t2i/i2t or both; got '{spec}'")
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


def main(argv: Sequence[str] | None = None) -> dict:
    state: dict = {}

    def units(cfg: dict) -> list[cli.Unit]:
        tag = dataset_tag(cfg["data"]["dataset"])
        state["data"] = build_retrieval_data(cfg["data"])   # read once, shared by both directions
        return [cli.Unit(d, {**cfg, "direction": d}, Path(cfg["run"]["out_dir"]) / f"{tag}_{d}",
                         {"direction": d, "dataset": tag}) for d in split_directions(cfg["direction"])]

    def report(u: cli.Unit, summary: dict) -> str:
        m, p = summary["metrics"], "txt" if u.name == "i2t" else "img"
        return (f"{u.cfg['method']} {u.meta['dataset']} {u.name}: R@1 {m.get(f'{p}_r1', float('nan')):.2f} "
                f"R@5 {m.get(f'{p}_r5', float('nan')):.2f} R@10 {m.get(f'{p}_r10', float('nan')):.2f}")

    def finish(cfg: dict, results: dict[str, dict]) -> None:
        tag = dataset_tag(cfg["data"]["dataset"])
        combined = collect_results(cfg["run"]["out_dir"], tag, cfg["method"])
        path = Path(cfg["run"]["out_dir"]) / "results.json"
        everything = json.loads(path.read_text()) if path.is_file() else {}
        everything[tag] = combined
        path.write_text(json.dumps(everything, indent=2))
        logger.info("results for %s written to %s", tag, path)

    return cli.main(argv, description=__doc__, defaults=DEFAULTS, units=units,
                    build=lambda u: RetrievalTask.from_config(u.cfg, data=state["data"]), report=report,
                    finish=finish, desc=lambda u: f"{u.cfg['method']} {u.meta['dataset']} {u.name}",
                    setup=methods.load_all, preflight=preflight, meanings=meanings())


def preflight(cfg: dict) -> list[str]:
    """Missing or damaged weight files of the policy and reward CLIPs, before any model is loaded."""
    from ..common.clip import checkpoint_problems

    return checkpoint_problems(cfg)


if __name__ == "__main__":
    cli.run_main(main, keep_debug=True)
