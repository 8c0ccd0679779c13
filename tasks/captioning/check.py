"""Pre-flight check of caption TTA and captioner training: what fails later is caught before any model is loaded.

``python -m tasks.captioning.check [--config C.yaml] [--data-only] [key.sub=value ...]`` (the config keys of
:mod:`tasks.captioning.run`) opens ``data.annotations`` with the loader of the run, resolves its first image and a
few random ones under ``data.images_root`` with the loader's own rule (:class:`tasks.captioning.data.ImageResolver`)
and opens them; without ``--data-only`` it also checks the captioner checkpoint and the CLIP weights the config
names. Each problem is one ``ERROR:`` line naming the path; the exit code is 1 when there is any.
``data.images_root=null`` checks the annotations only (CapDec trains on captions); ``--domain in --domain near``
checks those NoCaps domains (default: ``data.domain``). The scripts call it after their
``need`` checks (``scripts/tta_*_c2{f,n}.sh``, ``scripts/train_*_coco.sh``).
"""
from __future__ import annotations

import argparse
from pathlib import Path
from typing import Sequence

from ..common.data import probe_samples

__all__ = ["data_problems", "problems", "main", "weight_files", "damaged_weights", "package_problems", "preflight"]


def data_problems(annotations: str | Path, images_root: str | Path | None, split: str = "test",
                  domain: str | None = None, what: str = "caption data", probes: int = 4) -> list[str]:
    """Problems of an annotation file and its images, as the loaders will meet them (empty when none).

    Args:
        annotations: the annotation file (any format of :func:`tasks.captioning.data.load_annotations`).
        images_root: the images root (``None``: annotations only).
        split, domain: as the run passes them to the loader.
        what: how the lines name this data (``"training data"``, ``"evaluation data"``).
        probes: random images probed besides the first.
    """
    from .data import CaptionImageDataset, load_annotations

    try:
        items = load_annotations(annotations, split, domain)
    except Exception as e:  # noqa: BLE001 - reported to the user
        return [f"{what}: {e}"]
    if not items:
        return [f"{what}: '{annotations}' holds no image (split {split!r}, domain {domain!r})"]
    if images_root is None:
        return []
    try:
        ds = CaptionImageDataset(items, images_root)   # resolves the first image, or names it
    except Exception as e:  # noqa: BLE001
        return [f"{what} ({annotations}): {e}"]
    return [f"{what}: {line}" for line in probe_samples(len(ds), ds.load_image, lambda i: items[i].image, probes)]


def weight_files(cfg: dict) -> list:
    """Every weight file a caption TTA run of ``cfg`` reads: the captioner checkpoint, the LM folder it reads, the
    policy, reward and evaluation CLIPs (:class:`tasks.common.preflight.WeightFile`)."""
    from ..common.clip import spec_weight_files
    from ..common.preflight import WeightFile
    from .checkpoint import CAPTIONER_HINT

    c = cfg["captioner"]
    out = []
    if c["checkpoint"]:
        out.append(WeightFile("captioner checkpoint", Path(c["checkpoint"]).expanduser(), CAPTIONER_HINT))
    specs = [("policy CLIP", cfg["model"])] + [("evaluation CLIP", cfg["eval"])] * bool(cfg["eval"]["enabled"])
    specs += [("reward CLIP", s) for s in (cfg["reward"].get("ensemble") or [cfg["reward"]])]
    out += [w for what, spec in specs for w in spec_weight_files(what, spec)]
    return out


def _lm_files(cfg: dict) -> list:
    """The LM folder the captioner checkpoint reads (asked once the checkpoint itself is whole)."""
    from ..common.preflight import WeightFile
    from .checkpoint import lm_read_by, opt_hint

    c = cfg["captioner"]
    if not (c["checkpoint"] and Path(c["checkpoint"]).expanduser().is_file()):
        return []
    folder = lm_read_by(c["checkpoint"], c["lm"])
    return [WeightFile("language model weights", folder, opt_hint(folder))] if folder and folder.is_dir() else []


def damaged_weights(cfg: dict) -> list[str]:
    """One line per damaged (truncated, corrupt) weight file of a caption TTA config."""
    from ..common.preflight import weight_problems

    found = weight_problems(weight_files(cfg))
    return found + ([] if found else weight_problems(_lm_files(cfg)))


def package_problems(cfg: dict) -> list[str]:
    """The Python packages the run will need and lacks: pycocoevalcap for the COCO caption metrics (when the
    annotations hold references)."""
    from ..common.preflight import package_problems as missing

    d = cfg["data"]
    try:
        from .data import load_annotations

        refs = any(it.references for it in load_annotations(d["annotations"], d["split"], d["domain"]))
    except Exception:  # noqa: BLE001 - the data check names the file
        refs = True
    return missing({"pycocoevalcap": "the caption metrics (BLEU, METEOR, ROUGE-L, CIDEr, SPICE)"} if refs else {})


def preflight(cfg: dict) -> list[str]:
    """What a caption TTA run checks before loading any model: missing or damaged weight files, missing packages."""
    return _weights_problems(cfg)


def _weights_problems(cfg: dict) -> list[str]:
    from ..common.clip import _is_path

    out = []
    ckpt = cfg["captioner"]["checkpoint"]
    if ckpt and not Path(ckpt).is_file():
        out.append(f"captioner checkpoint not found: {ckpt}")
    specs = [("policy CLIP", cfg["model"]), ("evaluation CLIP", cfg["eval"] if cfg["eval"]["enabled"] else {})]
    specs += [("reward CLIP", s) for s in (cfg["reward"].get("ensemble") or [cfg["reward"]])]
    for what, spec in specs:
        if _is_path(spec.get("pretrained")) and not Path(spec["pretrained"]).is_file():
            out.append(f"{what} checkpoint not found: {spec['pretrained']}")
    return out + damaged_weights(cfg) + package_problems(cfg)


def problems(cfg: dict, data_only: bool = False, domains: Sequence[str | None] = ()) -> list[str]:
    """Every problem of a caption TTA config (:data:`tasks.captioning.task.DEFAULTS` keys); ``domains``: check these
    NoCaps domains instead of ``data.domain`` (the c2n scripts run one per domain)."""
    d = cfg["data"]
    out = [] if data_only else _weights_problems(cfg)
    for domain in domains or [d["domain"]]:
        what = "caption data" if domain is None else f"caption data ({domain} domain)"
        out += data_problems(d["annotations"], d["images_root"], d["split"], domain, what=what)
    return out


def main(argv: Sequence[str] | None = None) -> int:
    from ..common.cli import report_problems
    from ..common.config import load_config
    from .task import DEFAULTS

    from ..common.cli import config_epilog
    from .task import meanings

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter,
                                 epilog=config_epilog(DEFAULTS, meanings()))
    ap.add_argument("--config")
    ap.add_argument("--data-only", action="store_true", help="only the annotations and images")
    ap.add_argument("--domain", action="append", default=[], help="NoCaps domain to check (repeatable; default: "
                    "data.domain)")
    ap.add_argument("overrides", nargs="*")
    args = ap.parse_args(argv)
    return report_problems(lambda: problems(load_config(DEFAULTS, args.config, args.overrides), args.data_only,
                                            args.domain))


if __name__ == "__main__":
    from tasks.common.cli import run_main

    run_main(main)
