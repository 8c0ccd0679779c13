"""The main job: RLCF on the embedded offline world, end to end, on a CPU, with no downloads.

    python -m tasks.demo [--quick] [--all-methods] [--out output/demo]

1. builds the world (cached under ``data/world``) and trains or loads its CLIP models
   (cached under ``pretrained/world``);
2. runs every method row on ``val`` and on each shifted split through the same resumable runner
   as the real benchmarks (per-sample records under ``<out>/<row>/<split>/``);
3. runs the negative control (:mod:`tasks.demo.control`): RLCF (encoder) with the reward negated on a seeded
   subset of each shifted split, paired with the working RLCF on the same samples;
4. prints a table in the form of the RLCF paper's Table 1 (per split and OOD average, with
   bootstrap 95% confidence intervals) and writes ``results.json``, ``results.md`` and ``results.png``;
5. with ``--captions``, adds the caption part (``tasks.captioning.world_demo --quick``: a tiny ClipCap
   before / after RLCF on ``rendition``) to ``results.md``.

``scripts/demo.sh`` runs it under ``torchrun`` with one 1-thread process per core (2 at most): the
ranks share the world build, the model training and the samples of every row; the table is the same
as a one-process run's (episodic methods, per-sample seeded views).

Method learning rates for the world were chosen on the ``dev`` and ``dev_shift`` splits only
(``--tune``, :mod:`tasks.demo.tune`; ``configs/world/``).
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import time
from pathlib import Path

import torch

from ..classification.task import DEFAULTS
from ..common.cli import setup_logging
from ..common.config import load_config
from ..common.runner import dist_info, init_distributed
from ..methods import load_all as load_methods
from ..world.report import chart, example_grid, markdown, ood_average, seeds_markdown, split_stats
from .cells import (CONFIGS, HELD_OUT, OOD, PEER_ROWS, PLACEHOLDER_NOTE, ROWS, SPLITS, model_overrides,
                    placeholder_overrides, run_row)
from .control import CONFIG as CONTROL_CONFIG
from .control import markdown as control_markdown
from .control import negative_control
from .tune import tune

__all__ = ["main", "run_seed", "best_row", "write_report"]

logger = logging.getLogger("tasks.demo")


def run_seed(seed: int, out: Path, rows: list[tuple[str, str]], splits: list[str], ood: list[str],
             limit: int | None, views: int | None, extra: list[str], model_root: Path,
             placeholder: bool = False, control: int = 0) -> tuple[dict, dict[str, dict[str, list[dict]]]]:
    """Every row of the table for world-model seed ``seed``: ``(results, {row: {split: records}})`` on rank 0;
    ``control``: samples per shifted split of the negative control (:mod:`tasks.demo.control`; 0: none)."""
    from ..world.models import seed_root

    rank, _ = dist_info()
    results: dict = {"rows": {}, "splits": splits, "ood": ood, "limit": limit, "seed": seed,
                     "held_out": [s for s in HELD_OUT if s in splits],
                     "placeholder": placeholder, "note": PLACEHOLDER_NOTE if placeholder else ""}
    models = seed_root(model_root, seed)
    per_row: dict[str, dict[str, list[dict]]] = {}
    for label, cfg_name in rows:
        row_extra = list(extra)
        if placeholder and cfg_name == "zero-shot-reward.yaml":   # the teacher row: the (tiny) reward model itself
            row_extra += ["model." + x.split(".", 1)[1] for x in extra if x.startswith("reward.")]
        elif not placeholder:
            row_extra += model_overrides(cfg_name, models)
        cells = {s: run_row(CONFIGS / cfg_name, s, out / Path(cfg_name).stem, limit, views, row_extra, label)
                 for s in splits}
        if rank != 0:
            continue
        per_split = per_row[label] = {s: cells[s][1] for s in splits}
        anchor = next(iter(per_row.values()))   # the first row, zero-shot: every other row is paired with it
        base = None if anchor is per_split else anchor
        row = {s: split_stats(per_split[s], base[s] if base else None, s) for s in splits}
        row["ood_avg"] = ood_average(per_split, ood, baseline=base)
        results["rows"][label] = row
        gain = f", gain {row['ood_avg']['gain']:+.1f}" if base else ""
        logger.info("%s: val %.1f, OOD avg %.1f%s", label, row["val"]["top1"], row["ood_avg"]["top1"], gain)
    labels = dict((cfg_name, label) for label, cfg_name in rows)
    if control and CONTROL_CONFIG in labels:
        per = min(control, limit) if limit else control
        logger.info("stage: negative control, %s with the reward negated on %d samples per shifted split", 
                    labels[CONTROL_CONFIG], per)
        stats = negative_control(out, per_row, ood, per, views,
                                 list(extra) + ([] if placeholder else model_overrides(CONTROL_CONFIG, models)),
                                 label=labels[CONTROL_CONFIG], zero_label=rows[0][0])
        if stats:
            results["control"] = stats
    return results, per_row


def best_row(results: dict) -> str | None:
    """The adapted row (not zero-shot, not the teacher) with the highest OOD average."""
    rows = [k for k in list(results["rows"])[1:] if "teacher" not in k]
    return max(rows, key=lambda k: results["rows"][k]["ood_avg"]["top1"]) if rows else None


def write_report(results: dict, per_row: dict, out: Path, data_root: Path) -> str:
    """``results.json``, ``results.md``, ``results.png`` and ``examples.png`` under ``out``; returns the table."""
    out.mkdir(parents=True, exist_ok=True)
    (out / "results.json").write_text(json.dumps(results, indent=2))
    table = markdown(results)
    if results.get("control"):
        table += "\n" + control_markdown(results["control"])
    if results.get("placeholder"):
        table = PLACEHOLDER_NOTE + "\n\n" + table
    (out / "results.md").write_text(table)
    best = best_row(results)
    chart(results, per_row, out / "results.png", best)
    if best is not None:
        from ..world.splits import build_world_dataset

        zero = per_row[next(iter(per_row))]
        images = {s: _LazyImages(build_world_dataset(s, data_root), zero[s]) for s in results["ood"]}
        from ..world.shapes import CLASSNAMES

        example_grid(images, zero, per_row[best], CLASSNAMES, best, out / "examples.png")
    return table


class _LazyImages:
    """``images[i]``: the PIL image of record position ``i`` (loaded only for the samples the grid shows)."""

    def __init__(self, dataset, records: list[dict]) -> None:
        self.dataset, self.records = dataset, records

    def __getitem__(self, i: int):
        return self.dataset.load(self.records[i]["index"])


def main(argv: list[str] | None = None) -> dict:
    """The main job (``python -m tasks.demo --help``); the runner's log level is restored when it returns."""
    runner_log = logging.getLogger("tasks.common.runner")
    level = runner_log.level
    try:
        return _main(argv)
    finally:
        runner_log.setLevel(level)


def _main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="60 samples per split and 16 views (a look in ~2 min, "
                    "once the models are trained)")
    ap.add_argument("--seeds", default="0", help="world-model seeds, e.g. 0,1,2 (the README's table): each trains "
                    "its own policy and reward; the table is the mean and range over them")
    ap.add_argument("--all-methods", action="store_true", help="also the peer methods (C-TPT, ZERO, TDA, KD, "
                    "ensemble, MTA, TPS, DMN-ZS, DPE, BoostAdapter)")
    ap.add_argument("--limit", type=int, default=None, help="samples per split, a seeded random subset (default: "
                    "every sample; --quick: 60)")
    ap.add_argument("--out", default=None, help="results folder (default: output/demo; with --quick output/demo-quick, "
                    "so that a quick look never discards the records of the full run)")
    ap.add_argument("--control", type=int, default=240, help="samples per shifted split of the negative control: "
                    "RLCF (encoder) with the reward negated, paired with the working one (0: none; default 240, every "
                    "sample of the world's shifted splits)")
    ap.add_argument("--tune", action="store_true", help="learning-rate sweep on the dev and dev_shift splits only "
                    "(the rule: tasks/demo/tune.py; seed-0 models unless --seeds)")
    ap.add_argument("--tune-only", default="", help="with --tune: comma-separated configs, e.g. rlcf-tune,tpt-prompt")
    ap.add_argument("--threads", type=int, default=1,
                    help="torch CPU threads (1: the world's small models gain nothing from more, and lose under load)")
    ap.add_argument("--placeholder", action="store_true",
                    help="tiny random-weight CLIPs instead of the world's trained models (a pipeline check in seconds)")
    ap.add_argument("--captions", action="store_true",
                    help="add the caption part: a tiny ClipCap trained on world/train, RLCF-adapted on world/rendition (~2 min)")
    ap.add_argument("--no-captions", action="store_true", help=argparse.SUPPRESS)   # the default now; kept for old commands
    ap.add_argument("--world", action="store_true", help=argparse.SUPPRESS)   # the default; kept for old commands
    ap.add_argument("--verbose", action="store_true", help="third-party INFO logs too")
    args = ap.parse_args(argv)
    try:
        seeds = [int(x) for x in args.seeds.split(",") if x.strip()]
    except ValueError:
        ap.error(f"--seeds takes comma-separated integers, got {args.seeds!r}")
    seeds = list(dict.fromkeys(seeds))
    if not seeds:
        ap.error("--seeds needs at least one seed, e.g. 0 or 0,1,2")
    args.world = not args.placeholder
    setup_logging(args.verbose)
    if not args.verbose:   # the runner's per-cell lines (subset, shard, resumed) would bury the stages: --verbose
        logging.getLogger("tasks.common.runner").setLevel(logging.WARNING)
    load_methods()
    t0 = time.time()
    init_distributed()   # under torchrun: the ranks share the world build, the training and the samples
    rank, _ = dist_info()
    torch.set_num_threads(args.threads)
    extra: list[str] = []
    if not args.world:
        logger.warning(PLACEHOLDER_NOTE)
        extra = placeholder_overrides()
        args.limit = args.limit if args.limit is not None else 40
        args.quick, seeds = True, [0]
        args.control = 0 if "--control" not in (argv or []) else args.control
    limit = (args.limit if args.limit is not None else (60 if args.quick else 0)) or None
    views = 16 if args.quick else None
    out = Path(args.out or ("output/demo-quick" if args.quick and args.world else "output/demo"))
    out = out / ("placeholder" if not args.world else "")
    rows = ROWS + (PEER_ROWS if args.all_methods else [])
    # the placeholder has no trained filter model, hence no `adversarial` split
    splits, ood = (SPLITS, OOD) if args.world else (SPLITS[:-1], OOD[:-1])
    from ..world.models import get_world_models, seed_root

    data_root = Path(load_config(DEFAULTS, CONFIGS / ROWS[0][1], [])["data"]["root"]) / "world"
    model_root = Path(os.environ.get("WORLD_MODELS") or "pretrained/world")
    per_seed: dict[int, dict] = {}
    for seed in seeds:
        t_seed = time.time()
        logger.info("stage: world models, seed %d (built once, cached under %s)", seed, model_root)
        get_world_models(root=model_root, data_root=data_root, seed=seed,
                         which=("filter", "policy", "reward") if args.world else (),
                         splits=["dev", "dev_shift"] if args.tune else splits)
        if args.tune:
            models = seed_root(model_root, seed)
            return tune(out if seed == 0 else out / f"seed{seed}", limit or 320, views,
                        [x.strip() for x in args.tune_only.split(",") if x.strip()],
                        extra=[] if not args.world else model_overrides("rlcf-tune.yaml", models))
        seed_out = out if seed == 0 else out / f"seed{seed}"
        logger.info("stage: %d methods x %d splits, %s, seed %d", len(rows), len(splits),
                    f"{limit} samples per split" if limit else "every sample", seed)
        results, per_row = run_seed(seed, seed_out, rows, splits, ood, limit, views, extra, model_root,
                                    placeholder=not args.world, control=args.control)
        if rank != 0:
            continue
        results["minutes"] = (time.time() - t_seed) / 60   # this seed's models and table
        table = write_report(results, per_row, seed_out, data_root)
        per_seed[seed] = results
        print(f"\nRLCF on the embedded world, seed {seed}: top-1 % (95% bootstrap CI); OOD avg = mean of "
              + ", ".join(ood))
        print(table.split("\n\nPer split")[0] if "\n\nPer split" in table else table)
        if results.get("control"):   # the verdict CI checks, on the console too
            print(control_markdown(results["control"]).rstrip())
        print(f"per split (paired gains, ECE, changed predictions): {seed_out}/results.md; "
              f"figures: results.png, examples.png")
    if rank != 0:
        return {}
    results = per_seed[seeds[0]]
    if len(seeds) > 1:
        agg = seeds_markdown(per_seed)
        (out / "results-seeds.md").write_text(agg)
        (out / "results-seeds.json").write_text(json.dumps({str(k): v for k, v in per_seed.items()}, indent=2))
        print("\n" + agg)
        results = {"seeds": per_seed, **results}
    if args.world and args.captions:
        from ..captioning.world_demo import main as caption_demo

        caption_demo(["--quick", "--out-dir", str(out / "captions"), "--threads", str(args.threads)])
        captions_md = (out / "captions" / "results.md").read_text()
        (out / "results.md").write_text((out / "results.md").read_text() + "\n" + captions_md.replace("# ", "## ", 1))
        print(captions_md)
    minutes = (time.time() - t0) / 60
    print(f"results: {out}/results.md, results.json, results.png, examples.png"
          + (", results-seeds.md" if len(seeds) > 1 else "") + f" ({minutes:.1f} min)")
    return results

