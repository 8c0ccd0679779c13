"""The main job: RLCF on the embedded offline world, end to end, on a CPU, with no downloads.

    python -m tasks.demo [--quick] [--all-methods] [--out output/demo]

1. builds the world (cached under ``data/world``) and trains or loads its CLIP models
   (cached under ``pretrained/world``);
2. runs every method row on ``val`` and on each shifted split through the same resumable runner
   as the real benchmarks (per-sample records under ``<out>/<row>/<split>/``);
3. prints a table in the form of the RLCF paper's Table 1 (per split and OOD average, with
   bootstrap 95% confidence intervals) and writes ``results.json``, ``results.md`` and ``results.png``;
4. with ``--captions``, adds the caption part (``tasks.captioning.world_demo --quick``: a tiny ClipCap
   before / after RLCF on ``rendition``) to ``results.md``.

``scripts/demo.sh`` runs it under ``torchrun`` with one 1-thread process per core (2 at most): the
ranks share the world build, the model training and the samples of every row; the table is the same
as a one-process run's (episodic methods, per-sample seeded views).

Method hyperparameters for the world were chosen on the ``dev`` split only (``configs/world/``).
"""
from __future__ import annotations

import argparse
import json
import logging
import time
from pathlib import Path

import numpy as np
import torch

from .classification.task import DEFAULTS, ClassificationTask
from .common.cli import setup_logging
from .common.clip import run_fingerprint
from .common.config import load_config
from .methods import register_all
from .common.runner import barrier, dist_info, init_distributed, read_records, run, sample_order

logger = logging.getLogger("tasks.demo")
ROOT = Path(__file__).resolve().parents[1]
CONFIGS = ROOT / "configs" / "world"

# (row label, config file in configs/world/); the first two rows are the zero-shot anchors
ROWS = [
    ("CLIP policy (zero-shot)", "zero-shot.yaml"),
    ("CLIP reward (zero-shot, teacher)", "zero-shot-reward.yaml"),
    ("TPT", "tpt-prompt.yaml"),
    ("RLCF (prompt)", "rlcf-prompt.yaml"),
    ("RLCF (encoder)", "rlcf-tune.yaml"),
]
PEER_ROWS = [
    ("CLIP policy (ensemble)", "zero-shot-ensemble.yaml"),
    ("C-TPT", "ctpt-prompt.yaml"),
    ("ZERO", "zero.yaml"),
    ("TDA (online)", "tda.yaml"),
    ("KD from reward (encoder)", "kd-tune.yaml"),
]
SPLITS = ["val", "v2", "sketch", "rendition", "adversarial"]
OOD = ["v2", "sketch", "rendition", "adversarial"]


def run_cell(cfg: dict, folder: Path, limit: int | None, config: Path) -> tuple[dict, list[dict]]:
    """Run one configured method on its split: the runner's summary and the records in sample order
    (``({}, [])`` on ranks other than 0).

    A seeded order: a ``limit`` subset is a random (class-balanced in expectation) sample, the same for
    every row. Under torchrun the samples are sharded between the ranks; an online method (state carried
    across the stream) runs whole on rank 0 while the others wait, so its results do not depend on the
    ranks. Records of an older configuration or other world models are discarded, never mixed in.
    """
    task = ClassificationTask.from_config(cfg)
    rank, size = dist_info()
    kw = dict(workers=0, limit=limit, shuffle_seed=0, desc=f"{config.stem} {folder.name}",
              meta={"config": str(config.relative_to(ROOT))},
              on_change="restart", fingerprint=run_fingerprint(cfg))
    if size > 1 and getattr(task, "online", False):
        summary = run(task, folder, shard=False, **kw) if rank == 0 else None
        barrier()
    else:
        summary = run(task, folder, **kw)
    if rank != 0:
        return {}, []
    recs = read_records(folder)
    return summary, [recs[i] for i in sorted(sample_order(len(task), limit, 0))]


def run_row(config: Path, split: str, out: Path, limit: int | None, views: int | None,
            extra: list[str] = ()) -> tuple[dict, list[dict]]:
    """One (method, split) cell of the table: :func:`run_cell` under ``<out>/<split>``."""
    overrides = [f"data.set_id=world/{split}", f"run.out_dir={out}", "run.device=cpu", "run.workers=0", *extra]
    if limit is not None:
        overrides.append(f"run.limit={limit}")
    if views is not None:
        overrides.append(f"views.n={views}")
    cfg = load_config(DEFAULTS, config, overrides)
    return run_cell(cfg, out / split, limit, config)


def summarise(summary: dict) -> dict:
    """A cell of the table from the runner's summary: top-1 and its bootstrap CI over the samples that ran
    (the one rule for errored samples, everywhere: they are counted and reported, and every metric is over
    the ``n - errors`` others)."""
    m = summary["metrics"]
    return {"top1": m["top1"], "ci95": [m["top1_ci95_low"], m["top1_ci95_high"]],
            "n": summary["n"] - summary["errors"], "errors": summary["errors"]}


def _ok(records: list[dict]) -> list[dict]:
    return [r for r in records if "error" not in r]


def _correct(records: list[dict]) -> np.ndarray:
    return np.array([r["pred"] == r["label"] for r in records], dtype=float) * 100


def ood_average(per_split: dict[str, list[dict]], ood: list[str], seed: int = 0, n_boot: int = 1000,
                baseline: dict[str, list[dict]] | None = None) -> dict:
    """Mean of the per-split accuracies, with a bootstrap CI resampling each split independently.

    With ``baseline`` (another row's records of the same samples, in the same order) also the paired
    gain over it: the same resampled samples for both rows, so the CI excludes what they share.
    """
    base = None
    if baseline is not None:
        for s in ood:
            if [r["index"] for r in per_split[s]] != [r["index"] for r in baseline[s]]:
                raise ValueError(f"split {s}: the rows were run on different samples; a paired gain needs the same ones")
        # errored samples leave both rows of the pair: the gain is over the samples both ran
        both = {s: [i for i, (a, b) in enumerate(zip(per_split[s], baseline[s])) if "error" not in a and "error" not in b]
                for s in ood}
        accs = [_correct([per_split[s][i] for i in both[s]]) for s in ood]
        base = [_correct([baseline[s][i] for i in both[s]]) for s in ood]
    else:
        accs = [_correct(_ok(per_split[s])) for s in ood]
    rng = np.random.default_rng(seed)
    boots, gains = [], []
    for _ in range(n_boot):
        idx = [rng.integers(0, len(a), len(a)) for a in accs]
        boots.append(np.mean([a[i].mean() for a, i in zip(accs, idx)]))
        if base is not None:
            gains.append(np.mean([(a[i] - b[i]).mean() for a, b, i in zip(accs, base, idx)]))
    out = {"top1": float(np.mean([a.mean() for a in accs])),
           "ci95": [float(np.quantile(boots, 0.025)), float(np.quantile(boots, 0.975))]}
    if base is not None:
        out["gain"] = float(np.mean([(a - b).mean() for a, b in zip(accs, base)]))
        out["gain_ci95"] = [float(np.quantile(gains, 0.025)), float(np.quantile(gains, 0.975))]
    return out


def markdown(results: dict) -> str:
    splits = results["splits"]
    head = "| method | " + " | ".join(splits) + " | OOD avg | OOD gain over zero-shot (paired 95% CI) |"
    lines = [head, "|" + "---|" * (len(splits) + 3)]
    for label, row in results["rows"].items():
        cells = [f"{row[s]['top1']:.1f} ({row[s]['ci95'][0]:.1f}-{row[s]['ci95'][1]:.1f})" for s in splits]
        o = row["ood_avg"]
        cells.append(f"**{o['top1']:.1f}** ({o['ci95'][0]:.1f}-{o['ci95'][1]:.1f})")
        cells.append(f"{o['gain']:+.1f} ({o['gain_ci95'][0]:+.1f} to {o['gain_ci95'][1]:+.1f})" if "gain" in o else "")
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def chart(results: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cols = results["splits"] + ["ood_avg"]
    labels = list(results["rows"])
    fig, ax = plt.subplots(figsize=(11, 4.5))
    width = 0.8 / len(labels)
    for j, label in enumerate(labels):
        row = results["rows"][label]
        vals = [row[c]["top1"] for c in cols]
        err = np.array([[row[c]["top1"] - row[c]["ci95"][0], row[c]["ci95"][1] - row[c]["top1"]] for c in cols]).T
        ax.bar(np.arange(len(cols)) + j * width, vals, width, yerr=err, capsize=2, label=label)
    ax.set_xticks(np.arange(len(cols)) + 0.4 - width / 2, [c.replace("_", " ") for c in cols])
    ax.set_ylabel("top-1 accuracy (%)")
    title = "RLCF on the embedded world (95% bootstrap CI)"
    if results.get("placeholder"):
        title = "PLACEHOLDER: random-weight models, chance-level by construction (95% bootstrap CI)"
    ax.set_title(title)
    ax.legend(fontsize=8, ncol=2)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


TUNE_GRID = {   # learning rates tried on `dev` (never on a test split) by `python -m tasks.demo --tune`
    "tpt-prompt.yaml": [1e-3, 5e-3, 2e-2, 5e-2, 1e-1, 3e-1, 1.0],
    "ctpt-prompt.yaml": [1e-3, 5e-3, 2e-2, 5e-2, 1e-1, 3e-1, 1.0],
    "rlcf-prompt.yaml": [2e-3, 7e-3, 2e-2, 5e-2, 1e-1, 3e-1, 1.0],
    "rlcf-tune.yaml": [1e-5, 3e-5, 1e-4, 3e-4, 1e-3],
    "kd-tune.yaml": [1e-5, 3e-5, 1e-4, 3e-4],
}


def tune(out: Path, limit: int, views: int | None) -> dict:
    """Dev-split accuracy of zero-shot and of each learning rate of :data:`TUNE_GRID` (printed; choose by hand)."""
    cells = [("zero-shot", "zero-shot.yaml", [])]
    for cfg_name, lrs in TUNE_GRID.items():
        cells += [(f"{Path(cfg_name).stem}-lr{lr:g}", cfg_name, [f"adapt.lr={lr}"]) for lr in lrs]
    table = {}
    for name, cfg_name, over in cells:
        overrides = ["data.set_id=world/dev", "run.device=cpu", *over] + ([f"views.n={views}"] if views else [])
        summary, _ = run_cell(load_config(DEFAULTS, CONFIGS / cfg_name, overrides), out / "tune" / name, limit,
                              CONFIGS / cfg_name)
        if summary:   # rank 0
            table[name] = summarise(summary)["top1"]
            print(f"dev {name}: {table[name]:.1f}", flush=True)
    return table


PLACEHOLDER_NOTE = ("PLACEHOLDER RUN: tiny RANDOM-WEIGHT CLIP models (configs/models/RLCF-Tiny-*.json) on the world's "
                    "images. It checks the whole pipeline end to end; its accuracies are chance-level by construction "
                    "and say nothing about the methods. Run `bash scripts/demo.sh` (without --placeholder) for the trained world models.")


def placeholder_overrides() -> list[str]:
    models = ROOT / "configs" / "models"
    return ["model.arch=RLCF-Tiny-Test", "model.pretrained=null", f"model.config_file={models / 'RLCF-Tiny-Test.json'}",
            "reward.arch=RLCF-Tiny-Reward", "reward.pretrained=null",
            f"reward.config_file={models / 'RLCF-Tiny-Reward.json'}"]


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="fewer samples and views (a few minutes)")
    ap.add_argument("--all-methods", action="store_true", help="also the peer methods (C-TPT, ZERO, TDA, KD, ensemble)")
    ap.add_argument("--limit", type=int, default=None, help="samples per split, a seeded random subset (default 160; --quick: 60; 0: all)")
    ap.add_argument("--out", default="output/demo")
    ap.add_argument("--tune", action="store_true", help="learning-rate sweep on the dev split only")
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
    args.world = not args.placeholder
    setup_logging(args.verbose)
    register_all()
    t0 = time.time()
    init_distributed()   # under torchrun: the ranks share the world build, the training and the samples
    rank, _ = dist_info()
    torch.set_num_threads(args.threads)
    extra: list[str] = []
    if not args.world:
        logger.warning(PLACEHOLDER_NOTE)
        extra = placeholder_overrides()
        args.limit = args.limit if args.limit is not None else 40
        args.quick = True
    # 160 per split keeps a first run (world + models + table) within 15 min on 2 cores; --limit 0: every sample
    limit = args.limit if args.limit is not None else (60 if args.quick else 160)
    limit = limit or None
    views = 16 if args.quick else None
    out = Path(args.out)
    rows = ROWS + (PEER_ROWS if args.all_methods else [])
    # the placeholder has no trained filter model, hence no `adversarial` split
    splits, ood = (SPLITS, OOD) if args.world else (SPLITS[:-1], OOD[:-1])
    from .world.models import get_world_models

    data_root = Path(load_config(DEFAULTS, CONFIGS / ROWS[0][1], [])["data"]["root"]) / "world"
    # builds the world and trains the models once (cached, verified); the placeholder only needs the splits
    get_world_models(data_root=data_root, which=("filter", "policy", "reward") if args.world else (),
                     splits=["dev"] if args.tune else splits)
    if args.tune:
        return tune(out, limit or 200, views)
    results: dict = {"rows": {}, "splits": splits, "ood": ood, "limit": limit, "quick": args.quick,
                     "placeholder": not args.world, "note": "" if args.world else PLACEHOLDER_NOTE}
    if not args.world:
        out = out / "placeholder"
    anchor: dict[str, list[dict]] | None = None
    for label, cfg_name in rows:
        row_extra = list(extra)
        if extra and cfg_name == "zero-shot-reward.yaml":   # the teacher row: the (tiny) reward model itself
            row_extra += ["model." + x.split(".", 1)[1] for x in extra if x.startswith("reward.")]
        cells = {s: run_row(CONFIGS / cfg_name, s, out / Path(cfg_name).stem, limit, views, row_extra)
                 for s in splits}
        if rank != 0:
            continue
        row = {s: summarise(cells[s][0]) for s in splits}
        per_split = {s: cells[s][1] for s in splits}
        anchor = anchor or per_split   # the first row, zero-shot: every other row's paired gain is over it
        row["ood_avg"] = ood_average(per_split, ood, baseline=None if anchor is per_split else anchor)
        results["rows"][label] = row
        logger.info("%s: val %.1f, OOD avg %.1f", label, row["val"]["top1"], row["ood_avg"]["top1"])
    if rank != 0:
        return {}
    results["minutes"] = (time.time() - t0) / 60
    out.mkdir(parents=True, exist_ok=True)
    (out / "results.json").write_text(json.dumps(results, indent=2))
    table = markdown(results)
    (out / "results.md").write_text(table)
    chart(results, out / "results.png")
    if not args.world:
        print("\n" + PLACEHOLDER_NOTE)
        (out / "results.md").write_text(PLACEHOLDER_NOTE + "\n\n" + table)
    print("\nRLCF on the embedded world: top-1 % (95% bootstrap CI); OOD avg = mean of " + ", ".join(ood))
    print(table)
    if args.world and args.captions:
        from .captioning.world_demo import main as caption_demo

        caption_demo(["--quick", "--out-dir", str(out / "captions"), "--threads", str(args.threads)])
        captions_md = (out / "captions" / "results.md").read_text()
        (out / "results.md").write_text(table + "\n" + captions_md.replace("# ", "## ", 1))
        print(captions_md)
        results["minutes"] = (time.time() - t0) / 60
        (out / "results.json").write_text(json.dumps(results, indent=2))
    print(f"results: {out}/results.json, results.md, results.png ({results['minutes']:.1f} min)")
    return results


if __name__ == "__main__":
    main()
