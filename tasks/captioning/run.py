"""Command line of caption test-time adaptation (RLCF):

``python -m tasks.captioning.run --config configs/captioning/clipcap-c2f.yaml [key.sub=value ...]``
(what ``scripts/tta_clipcap_c2f.sh`` runs; under ``torchrun`` each rank takes a shard).

Per image: the policy CLIP embeds it once, K captions by beam search, CLIPScore rewards from the
reward CLIP on the raw captions, mean-of-K baseline, advantage-weighted token log-likelihood
through the mapper, ``adapt.steps`` AdamW steps, a 5-beam final caption, exact reset. Records
(``records-*.jsonl``) hold every step's candidates and rewards; ``summary.json`` / ``summary.md``
the metrics (after TTA and, with ``eval.zero_shot``, before it); ``captions.json`` the official
result format (``[{"image_id", "caption"}]``).
"""
from __future__ import annotations

from pathlib import Path
from typing import Sequence

from ..common import cli
from .. import methods
from .task import DEFAULTS, CaptionTask, meanings, write_official_results

__all__ = ["main"]


def units(cfg: dict) -> list[cli.Unit]:
    return [cli.Unit("captions", cfg, Path(cfg["run"]["out_dir"]), {"adapt": cfg["adapt"], "data": cfg["data"]})]


def report(u: cli.Unit, summary: dict) -> str:
    m = summary["metrics"]
    return (f"{u.cfg['method']} captions: CIDEr {m.get('CIDEr', float('nan')):.2f} (zero-shot "
            f"{m.get('zeroshot/CIDEr', float('nan')):.2f}), BLEU-4 {m.get('BLEU-4', float('nan')):.2f}, "
            f"CLIPScore {m.get('CLIPScore', float('nan')):.2f}, RefCLIPScore {m.get('RefCLIPScore', float('nan')):.2f}")


#: the rows of the results table a caption TTA run prints
TABLE_ROWS = ("BLEU-1", "BLEU-2", "BLEU-3", "BLEU-4", "METEOR", "ROUGE-L", "CIDEr", "SPICE", "CLIPScore", "RefCLIPScore")


def results_table(cfg: dict, metrics: dict) -> str:
    """The markdown table of a caption TTA run (x100): every COCO metric, CLIPScore and RefCLIPScore, zero-shot and
    adapted; a metric that did not run says why."""
    skipped = {s.split(" ", 1)[0]: s.split(" ", 1)[1].strip("()") for s in metrics.get("skipped", []) if " " in s}
    off = {"METEOR": cfg["eval"]["meteor"] is False and "eval.meteor=false",
           "SPICE": cfg["eval"]["spice"] is False and "eval.spice=false",
           "CLIPScore": not cfg["eval"]["enabled"] and "eval.enabled=false",
           "RefCLIPScore": not cfg["eval"]["enabled"] and "eval.enabled=false"}
    refs = "CIDEr" in metrics
    rows = [f"| metric | zero-shot | {cfg['method']} (adapted) |", "|---|---:|---:|"]
    for key in TABLE_ROWS:
        if key in metrics:
            zs = metrics.get(f"zeroshot/{key}")
            rows.append(f"| {key} | {'-' if zs is None else f'{zs:.2f}'} | {metrics[key]:.2f} |")
            continue
        why = skipped.get(key) or off.get(key) or ("no reference captions" if not refs else "not computed")
        rows.append(f"| {key} | skipped: {why} | skipped: {why} |")
    note = f"metrics x100, {metrics.get('tokenizer', '?')} tokenizer"
    return "\n".join(rows) + f"\n\n({note})\n"


def main(argv: Sequence[str] | None = None) -> dict | None:
    """CLI: run caption TTA on one dataset (see module docstring); returns the summary (with the command line's
    ``exit_code``)."""
    tasks: dict = {}

    def build(u: cli.Unit) -> CaptionTask:
        tasks[u.name] = CaptionTask.from_config(u.cfg)
        return tasks[u.name]

    def finish(cfg: dict, results: dict) -> None:
        out = Path(cfg["run"]["out_dir"])
        write_official_results(tasks["captions"], out)
        table = results_table(cfg, results["captions"]["metrics"])
        (out / "results.md").write_text(table)
        print(f"\n{table}\nresults: {out / 'results.md'} (per-image records, summary.json / summary.md and "
              f"captions.json in {out})")

    def preflight(cfg: dict) -> list[str]:
        from .check import preflight as problems

        return problems(cfg)

    results = cli.main(argv, description=__doc__, defaults=DEFAULTS, units=units, build=build, report=report,
                       finish=finish, desc=lambda u: f"{u.cfg['method']} captions", setup=methods.load_all,
                       preflight=preflight, meanings=meanings())
    if results.get("captions") is None:
        return None
    summary = cli.Results(results["captions"])
    summary.exit_code = results.exit_code
    return summary


if __name__ == "__main__":
    cli.run_main(main, keep_debug=True)
