"""Command line: ``python -m tasks.classification.run --config CONFIG.yaml [key.sub=value ...]``.

``data.set_id`` may list several sets separated by ``/`` (official style: ``A/V/R/I/K``); each
gets its own folder ``<run.out_dir>/<set_id>`` and its ``per_set`` config entries. Under ``torchrun``
every rank takes a disjoint shard and rank 0 writes the summary. Rerunning the same command resumes an
interrupted run. ``--verbose`` shows third-party logs; ``--debug`` tracebacks of expected errors.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Sequence

from ..common import cli
from ..common.config import for_set
from ..common.providers import is_provider
from .. import methods
from .task import DEFAULTS, ClassificationTask, meanings

__all__ = ["main", "split_set_ids", "units", "preflight", "set_label"]


def split_set_ids(spec: str) -> list[str]:
    """``A/V/R`` -> ``[A, V, R]``; ``C/gaussian_noise/5`` and a provider's ``world/val`` stay whole;
    ``world/val/v2`` -> ``[world/val, world/v2]``."""
    parts = spec.split("/")
    provider = is_provider(parts[0].lower())
    if provider or parts[0] == "C" or len(parts) == 1:
        return [spec] if not provider or len(parts) == 2 else [f"{parts[0]}/{p}" for p in parts[1:]]
    return parts


def set_label(set_id: str, data: dict) -> str:
    """How the results table names a set: its id, or for your own data the folder's or the list file's name."""
    if set_id == "folder":
        return Path(data["root"]).expanduser().resolve().name or set_id
    if set_id == "list" and data.get("file"):
        return Path(data["file"]).name
    return set_id


def units(cfg: dict) -> list[cli.Unit]:
    out = []
    for set_id in split_set_ids(cfg["data"]["set_id"]):
        one = for_set(cfg, set_id)
        out.append(cli.Unit(set_id, one, Path(cfg["run"]["out_dir"]) / set_id.replace("/", "_"),
                            {"policy": one["policy"], "set_id": set_id, "label": set_label(set_id, one["data"])}))
    return out


def preflight(cfg: dict) -> list[str]:
    """Missing or damaged weight files (the policy and reward CLIPs, a CoOp prompt), before any model is loaded."""
    from ..common.clip import checkpoint_problems
    from ..common.preflight import WeightFile, weight_problems

    coop = cfg["prompt"]["coop"]
    extra = [WeightFile("CoOp prompt checkpoint", Path(coop), "the official CoOp weights "
                        "(coop_16shots_nctx4_cscFalse_ctpend_vitb16_seed1), or prompt.coop=null")] if coop else []
    return checkpoint_problems(cfg) + weight_problems(extra)


def _method_label(method: str, metrics: dict) -> str:
    """The method's name, marked when its result was tuned on the test labels (DMN's official weight search)."""
    return f"{method} ({metrics['tuning']})" if metrics.get("tuning") else method


def report(u: cli.Unit, summary: dict) -> str:
    m = summary["metrics"]
    return (f"{_method_label(u.cfg['method'], m)} {u.name}: top1 {m.get('top1', float('nan')):.2f} "
            f"top5 {m.get('top5', float('nan')):.2f} ECE {m.get('ece', float('nan')):.2f}")


def results_table(cfg: dict, results: dict[str, dict]) -> str:
    """The markdown table a run prints and writes to ``<out_dir>/results.md``: one row per set."""
    rows = ["| set | method | policy | samples | top-1 | top-1 95% CI | top-5 | ECE | s/sample |",
            "|---|---|---|---:|---:|---|---:|---:|---:|"]
    for name, r in results.items():
        m = r["metrics"]
        errors = f" ({r['errors']} errors)" if r["errors"] else ""
        label = _method_label(cfg["method"], m)
        rows.append(f"| {r.get('label', name)} | {label} | {cfg['policy']} | {r['n'] - r['errors']}{errors} | "
                    f"{m['top1']:.2f} | {m['top1_ci95_low']:.1f} - {m['top1_ci95_high']:.1f} | {m['top5']:.2f} | "
                    f"{m['ece']:.2f} | {r['time_per_sample_median'] or 0:.3f} |")
    return "\n".join(rows) + "\n"


def finish(cfg: dict, results: dict[str, dict]) -> None:
    out = Path(cfg["run"]["out_dir"])
    (out / "results.json").write_text(
        json.dumps({k: {**{x: v["metrics"].get(x) for x in ("top1", "top5", "ece")},
                        **({"tuning": v["metrics"]["tuning"]} if v["metrics"].get("tuning") else {})}
                    for k, v in results.items()},
                   indent=2))
    table = results_table(cfg, results)
    (out / "results.md").write_text(table)
    print(f"\n{table}\nresults: {out / 'results.md'} (records and summary.md per set under {out}/<set>)")


def main(argv: Sequence[str] | None = None) -> dict:
    return cli.main(argv, description=__doc__, defaults=DEFAULTS, units=units,
                    build=lambda u: ClassificationTask.from_config(u.cfg), report=report, finish=finish,
                    setup=methods.load_all, preflight=preflight, meanings=meanings())


if __name__ == "__main__":
    cli.run_main(main, keep_debug=True)
