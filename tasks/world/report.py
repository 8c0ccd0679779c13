"""The main job's analysis from per-sample records: paired gains, changed predictions, calibration, the
table (one seed, or mean and range over world-model seeds), ``results.png`` and the example grid.

A *row* is one method's records per split (``{split: [record, ...]}``, the same samples in the same order for
every row); the first row (zero-shot) is the anchor every gain is paired with. Records carry ``index``,
``label``, ``pred`` and ``confidence``; errored samples (``"error"``) leave both rows of a pair.
"""
from __future__ import annotations

import itertools
from pathlib import Path
from typing import Sequence

import numpy as np

from ..common.metrics import expected_calibration_error

__all__ = ["ood_average", "split_stats", "markdown", "seeds_markdown", "chart", "example_grid", "reliability"]

Records = list[dict]


def _ok(records: Records) -> Records:
    return [r for r in records if "error" not in r]


def _correct(records: Records) -> np.ndarray:
    return np.array([r["pred"] == r["label"] for r in records], dtype=float) * 100


def _pairs(a: Records, b: Records, split: str) -> tuple[Records, Records]:
    if [r["index"] for r in a] != [r["index"] for r in b]:
        raise ValueError(f"split {split}: the rows were run on different samples; a paired gain needs the same ones")
    keep = [i for i, (x, y) in enumerate(zip(a, b)) if "error" not in x and "error" not in y]
    return [a[i] for i in keep], [b[i] for i in keep]


def ood_average(per_split: dict[str, Records], ood: Sequence[str], seed: int = 0, n_boot: int = 1000,
                baseline: dict[str, Records] | None = None) -> dict:
    """Mean of the per-split accuracies, with a bootstrap CI resampling each split independently.

    With ``baseline`` (another row's records of the same samples, in the same order) also the paired gain
    over it: the same resampled samples for both rows, so the CI excludes what they share.
    """
    if baseline is not None:
        pairs = [_pairs(per_split[s], baseline[s], s) for s in ood]
        accs, base = [_correct(a) for a, _ in pairs], [_correct(b) for _, b in pairs]
    else:
        accs, base = [_correct(_ok(per_split[s])) for s in ood], None
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


def split_stats(records: Records, baseline: Records | None, split: str, seed: int = 0, n_boot: int = 1000) -> dict:
    """One cell: top-1 with its bootstrap CI, ECE (20 bins, %), and against ``baseline`` (same samples) the
    paired gain with its CI and the changed predictions (``wrong_to_right``, ``right_to_wrong``)."""
    ok = _ok(records)
    c = _correct(ok)
    rng = np.random.default_rng(seed)
    boots = c[rng.integers(0, c.size, size=(n_boot, c.size))].mean(1) if c.size else np.array([np.nan])
    out = {"top1": float(c.mean()) if c.size else float("nan"),
           "ci95": [float(np.quantile(boots, 0.025)), float(np.quantile(boots, 0.975))],
           "n": len(ok), "errors": len(records) - len(ok),
           "ece": float(100 * expected_calibration_error([r["confidence"] for r in ok], c > 0))}
    if baseline is not None:
        a, b = _pairs(records, baseline, split)
        ca, cb = _correct(a), _correct(b)
        d = ca - cb
        g = d[rng.integers(0, d.size, size=(n_boot, d.size))].mean(1) if d.size else np.array([np.nan])
        out.update(gain=float(d.mean()) if d.size else float("nan"),
                   gain_ci95=[float(np.quantile(g, 0.025)), float(np.quantile(g, 0.975))],
                   wrong_to_right=int(((ca > 0) & (cb == 0)).sum()), right_to_wrong=int(((ca == 0) & (cb > 0)).sum()))
    return out


def _ci(v: float, ci: Sequence[float], signed: bool = False) -> str:
    f = "{:+.1f}" if signed else "{:.1f}"
    return f"{f.format(v)} ({f.format(ci[0])} to {f.format(ci[1])})" if signed else \
        f"{f.format(v)} ({f.format(ci[0])}-{f.format(ci[1])})"


def captures(row: dict, teacher: dict | None) -> float | None:
    """The row's OOD gain over zero-shot as a percentage of the teacher's (``None`` without a teacher gain)."""
    t = (teacher or {}).get("ood_avg", {}).get("gain")
    g = row["ood_avg"].get("gain")
    return None if g is None or not t or t <= 0 else 100 * g / t


def _names(results: dict) -> list[str]:
    """Split names for a header: a family no training augmentation of the teacher imitates says so."""
    held = set(results.get("held_out", ()))
    return [f"{s} (held out)" if s in held else s for s in results["splits"]]


def markdown(results: dict) -> str:
    """The main table (top-1 with CI per split, OOD average, paired OOD gain, share of the teacher's gain),
    then per split for every adapted row: the paired gain, ECE and the changed predictions."""
    splits, rows = results["splits"], results["rows"]
    teacher = next((r for label, r in rows.items() if "teacher" in label), None)
    head = ("| method | " + " | ".join(_names(results)) + " | OOD avg | OOD gain over zero-shot (paired 95% CI) | "
            "captures % of the teacher's gain |")
    lines = [head, "|" + "---|" * (len(splits) + 4)]
    for label, row in rows.items():
        cells = [_ci(row[s]["top1"], row[s]["ci95"]) for s in splits]
        o = row["ood_avg"]
        cells.append(f"**{o['top1']:.1f}** ({o['ci95'][0]:.1f}-{o['ci95'][1]:.1f})")
        cells.append(_ci(o["gain"], o["gain_ci95"], signed=True) if "gain" in o else "")
        cap = captures(row, teacher) if row is not teacher else None
        cells.append(f"{cap:.0f}%" if cap is not None else "")
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    lines += ["", "Per split, against zero-shot on the same samples: paired gain (95% CI), ECE (%, 20 bins), "
              "predictions changed wrong -> right / right -> wrong.", "",
              "| method | split | top-1 | paired gain | ECE | wrong -> right | right -> wrong |",
              "|---|---|---|---|---|---|---|"]
    for label, row in rows.items():
        for s in splits:
            c = row[s]
            if "gain" not in c:
                lines.append(f"| {label} | {s} | {c['top1']:.1f} | | {c['ece']:.1f} | | |")
                continue
            lines.append(f"| {label} | {s} | {c['top1']:.1f} | {_ci(c['gain'], c['gain_ci95'], True)} | "
                         f"{c['ece']:.1f} | {c['wrong_to_right']} | {c['right_to_wrong']} |")
    return "\n".join(lines) + "\n"


def seeds_markdown(per_seed: dict[int, dict]) -> str:
    """Mean and range over world-model seeds of every cell, and per seed each row's paired OOD gain (CI)."""
    seeds = sorted(per_seed)
    first = per_seed[seeds[0]]
    splits, labels = first["splits"], list(first["rows"])
    head = ("| method | " + " | ".join(_names(first)) + " | OOD avg | OOD gain per seed " + ", ".join(map(str, seeds)) +
            " (paired 95% CI) | captures % of the teacher's gain (per seed) |")
    lines = [f"Mean (min-max) over world-model seeds {', '.join(map(str, seeds))}; top-1 %.", "", head,
             "|" + "---|" * (len(splits) + 4)]
    for label in labels:
        rows = [per_seed[s]["rows"][label] for s in seeds]
        teachers = [next((r for k, r in per_seed[s]["rows"].items() if "teacher" in k), None) for s in seeds]

        def agg(vals: list[float]) -> str:
            return f"{np.mean(vals):.1f} ({min(vals):.1f}-{max(vals):.1f})"

        cells = [agg([r[s]["top1"] for r in rows]) for s in splits]
        cells.append("**" + agg([r["ood_avg"]["top1"] for r in rows]) + "**")
        gains = [r["ood_avg"] for r in rows]
        cells.append("; ".join(_ci(g["gain"], g["gain_ci95"], True) for g in gains) if "gain" in gains[0] else "")
        caps = [captures(r, t) for r, t in zip(rows, teachers)]
        cells.append(", ".join(f"{c:.0f}%" for c in caps) if all(c is not None for c in caps) and "teacher" not in label
                     else "")
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def reliability(records: Records, n_bins: int = 10) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(mean confidence, accuracy, count)`` per equal-width confidence bin (empty bins NaN)."""
    ok = _ok(records)
    conf = np.array([r["confidence"] for r in ok])
    corr = np.array([r["pred"] == r["label"] for r in ok], dtype=float)
    ids = np.clip((conf * n_bins).astype(int), 0, n_bins - 1)
    mc, acc, cnt = (np.full(n_bins, np.nan) for _ in range(3))
    for b in range(n_bins):
        m = ids == b
        cnt[b] = m.sum()
        if m.any():
            mc[b], acc[b] = conf[m].mean(), corr[m].mean()
    return mc, acc, cnt


def chart(results: dict, per_row: dict[str, dict[str, Records]], path: Path, best: str | None) -> None:
    """``results.png``: top-1 per split with CIs; paired gain over zero-shot per split; the reliability diagram
    (OOD splits pooled) of zero-shot and of ``best``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    splits, rows = results["splits"], results["rows"]
    cols = splits + ["ood_avg"]
    labels = list(rows)
    fig = plt.figure(figsize=(13, 8.5))
    ax = fig.add_subplot(2, 1, 1)
    width = 0.8 / len(labels)
    for j, label in enumerate(labels):
        vals = [rows[label][c]["top1"] for c in cols]
        err = np.array([[rows[label][c]["top1"] - rows[label][c]["ci95"][0],
                         rows[label][c]["ci95"][1] - rows[label][c]["top1"]] for c in cols]).T
        ax.bar(np.arange(len(cols)) + j * width, vals, width, yerr=err, capsize=2, label=label)
    ax.set_xticks(np.arange(len(cols)) + 0.4 - width / 2, [c.replace("_", " ") for c in cols])
    ax.set_ylabel("top-1 accuracy (%)")
    title = "RLCF on the embedded world (95% bootstrap CI)"
    if results.get("placeholder"):
        title = "PLACEHOLDER: random-weight models, chance-level by construction (95% bootstrap CI)"
    ax.set_title(title)
    ax.legend(fontsize=8, ncol=3)
    ax = fig.add_subplot(2, 2, 3)
    adapted = [label for label in labels[1:]]
    width = 0.8 / max(1, len(adapted))
    for j, label in enumerate(adapted):
        g = [rows[label][s].get("gain", np.nan) for s in splits]
        err = np.array([[rows[label][s]["gain"] - rows[label][s]["gain_ci95"][0],
                         rows[label][s]["gain_ci95"][1] - rows[label][s]["gain"]] for s in splits]).T
        ax.bar(np.arange(len(splits)) + j * width, g, width, yerr=err, capsize=2, label=label,
               color=f"C{labels.index(label)}")
    ax.axhline(0, color="k", lw=0.8)
    ax.set_xticks(np.arange(len(splits)) + 0.4 - width / 2, splits)
    ax.set_ylabel("paired gain over zero-shot (points)")
    ax.set_title("gain over zero-shot on the same samples (95% CI)", fontsize=10)
    ax = fig.add_subplot(2, 2, 4)
    ax.plot([0, 1], [0, 1], "k--", lw=0.8, label="perfect calibration")
    ood = results["ood"]
    for label in [labels[0]] + ([best] if best else []):
        pooled = [r for s in ood for r in per_row[label][s]]
        mc, acc, cnt = reliability(pooled)
        ece = 100 * expected_calibration_error([r["confidence"] for r in _ok(pooled)], _correct(_ok(pooled)) > 0)
        ax.plot(mc, acc, "o-", label=f"{label} (ECE {ece:.1f})", color=f"C{labels.index(label)}")
    ax.set_xlabel("confidence")
    ax.set_ylabel("accuracy")
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1)
    ax.set_title("reliability, OOD splits pooled", fontsize=10)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def example_grid(images: dict[str, list], zero: dict[str, Records], best: dict[str, Records], classnames: Sequence[str],
                 best_label: str, path: Path, per_split: int = 3) -> None:
    """``examples.png``: per OOD split, ``per_split`` samples whose prediction the best method changed, in turn one
    it fixed, one it broke, one it moved from a wrong class to another (the first of each in sample order), with
    the true class, zero-shot's and the method's predictions.
    ``images[split][i]``: a PIL image for record position ``i``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    splits = list(images)
    fig, axes = plt.subplots(len(splits), per_split, figsize=(2.4 * per_split, 2.6 * len(splits)), squeeze=False)
    for r, s in enumerate(splits):
        pairs = [(i, a, b) for i, (a, b) in enumerate(zip(zero[s], best[s])) if "error" not in a and "error" not in b]
        kinds = [[i for i, a, b in pairs if a["pred"] != a["label"] and b["pred"] == b["label"]],    # fixed
                 [i for i, a, b in pairs if a["pred"] == a["label"] and b["pred"] != b["label"]],    # broken
                 [i for i, a, b in pairs if a["pred"] != a["label"] and a["pred"] != b["pred"]
                  and b["pred"] != b["label"]]]                                                 # wrong -> wrong
        changed = list(dict.fromkeys(i for group in itertools.zip_longest(*kinds) for i in group if i is not None))
        changed = changed[:per_split]
        for c in range(per_split):
            ax = axes[r][c]
            ax.axis("off")
            if c >= len(changed):
                continue
            i = changed[c]
            z, b = zero[s][i], best[s][i]
            ax.imshow(images[s][i])
            ok = "right" if b["pred"] == b["label"] else "wrong"
            ax.set_title(f"{s}: {classnames[b['label']]}\nzero-shot: {classnames[z['pred']]}\n"
                         f"{best_label}: {classnames[b['pred']]} ({ok})", fontsize=7)
    fig.suptitle(f"OOD samples whose prediction {best_label} changed", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
