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
from .task import DEFAULTS, CaptionTask, write_official_results

__all__ = ["main"]


def units(cfg: dict) -> list[cli.Unit]:
    return [cli.Unit("captions", cfg, Path(cfg["run"]["out_dir"]), {"adapt": cfg["adapt"], "data": cfg["data"]})]


def report(u: cli.Unit, summary: dict) -> str:
    m = summary["metrics"]
    return (f"{u.cfg['method']} captions: CIDEr {m.get('CIDEr', float('nan')):.2f} (zero-shot "
            f"{m.get('zeroshot/CIDEr', float('nan')):.2f}), BLEU-4 {m.get('BLEU-4', float('nan')):.2f}, "
            f"CLIPScore {m.get('CLIPScore', float('nan')):.2f}, RefCLIPScore {m.get('RefCLIPScore', float('nan')):.2f}")


def main(argv: Sequence[str] | None = None) -> dict | None:
    """CLI: run caption TTA on one dataset (see module docstring); returns the summary."""
    tasks: dict = {}

    def build(u: cli.Unit) -> CaptionTask:
        tasks[u.name] = CaptionTask.from_config(u.cfg)
        return tasks[u.name]

    def finish(cfg: dict, results: dict) -> None:
        write_official_results(tasks["captions"], cfg["run"]["out_dir"])

    results = cli.main(argv, description=__doc__, defaults=DEFAULTS, units=units, build=build, report=report,
                       finish=finish, desc=lambda u: f"{u.cfg['method']} captions", setup=methods.load_all)
    return results.get("captions")


if __name__ == "__main__":
    main()
