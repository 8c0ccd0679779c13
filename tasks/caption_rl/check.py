"""Pre-flight check of caption RL training (``scripts/train_rl_*.sh`` call it before any model is loaded).

``python -m tasks.caption_rl.check --config configs/caption_rl/X.yaml [key.sub=value ...]`` opens the training
annotations (``data.annotations``, split ``data.split``) and, when the run evaluates, the evaluation ones
(``eval.*``), and resolves and opens the first and a few random images of each under its images root with the
loaders' own rule (:func:`tasks.captioning.check.data_problems`). Each problem is one ``ERROR:`` line naming the
path; the exit code is 1 when there is any.
"""
from __future__ import annotations

import argparse
from pathlib import Path
from typing import Sequence

from tasks.captioning.check import data_problems

__all__ = ["problems", "main", "weight_files", "preflight"]


def problems(cfg: dict) -> list[str]:
    """Problems of the data of a caption RL config (:func:`tasks.caption_rl.config.defaults` keys)."""
    d, e = cfg["data"], cfg["eval"]
    out = data_problems(d["annotations"], d["images_root"], d["split"], what="training data")
    if e["enabled"]:
        out += data_problems(e["annotations"], e["images_root"], e["split"], what="evaluation data")
    return out


def weight_files(cfg: dict) -> list:
    """The weight files a caption RL run of ``cfg`` reads (:class:`tasks.common.preflight.WeightFile`): the
    captioner checkpoint and its LM folder, the CLIPs (prefix, reward, evaluation, Phi), the ITM model, a
    discriminator checkpoint."""
    from tasks.captioning.checkpoint import CAPTIONER_HINT, lm_read_by, opt_hint
    from tasks.common.clip import spec_weight_files
    from tasks.common.preflight import WeightFile, probe

    c, v, g = cfg["captioner"], cfg["vlrm"], cfg["gt"]
    ckpt = Path(c["checkpoint"]).expanduser() if c["checkpoint"] else None
    out = [WeightFile("captioner checkpoint", ckpt, CAPTIONER_HINT)] if ckpt else []
    if ckpt and ckpt.is_file() and probe(ckpt) is None:
        lm = lm_read_by(ckpt, c["lm"])
        out += [WeightFile("language model weights", lm, opt_hint(lm))] if lm and lm.is_dir() else []
    specs = [("prefix CLIP", cfg["model"]), ("reward CLIP", cfg["reward"])]
    if cfg["eval"]["enabled"]:
        from .presets import resolve_eval

        specs.append(("evaluation CLIP", resolve_eval(cfg["eval"])))
    specs += [("Phi CLIP", v["phi"])] * (cfg["recipe"] == "vlrm_retrieval" and bool(v["phi"].get("arch")))
    out += [w for what, spec in specs for w in spec_weight_files(what, spec)]
    if cfg["recipe"] != "gt_contrastive" and v["sim"] == "itm" and Path(v["itm"]["path"]).is_dir():
        out.append(WeightFile("ITM model (BLIP-2) weights", Path(v["itm"]["path"]), "see tasks/caption_rl/README.md"))
    if g.get("disc_checkpoint"):
        out.append(WeightFile("discriminator checkpoint", Path(g["disc_checkpoint"]),
                              "python -m tasks.caption_rl.pretrain_disc writes one"))
    return out


def preflight(cfg: dict) -> list[str]:
    """Damaged weight files and missing packages of a caption RL config (before any model is loaded)."""
    from tasks.common.preflight import package_problems, weight_problems

    need = {"pycocoevalcap": "eval.coco (BLEU, METEOR, ROUGE-L, CIDEr)"} if cfg["eval"]["enabled"] and \
        cfg["eval"].get("coco") else {}
    return weight_problems(weight_files(cfg)) + package_problems(need)


def main(argv: Sequence[str] | None = None) -> int:
    from tasks.common.cli import report_problems

    from .config import load_rl_config

    from tasks.common.cli import config_epilog

    from .config import defaults, meanings

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter,
                                 epilog=config_epilog(defaults(), meanings()))
    ap.add_argument("--config")
    ap.add_argument("overrides", nargs="*")
    args = ap.parse_args(argv)
    return report_problems(lambda: (lambda cfg: problems(cfg) + preflight(cfg))(
        load_rl_config(args.config, args.overrides)))


if __name__ == "__main__":
    from tasks.common.cli import run_main

    run_main(main)
