"""RL training of a prefix captioner with CLIP rewards: command line.

``python -m tasks.caption_rl.train --recipe gt_contrastive|vlrm|vlrm_retrieval [--config configs/caption_rl/X.yaml]
[key.sub=value ...]`` (what ``scripts/train_rl_{gt,vlrm}_coco.sh`` run).

1. load the supervised captioner (``captioner.checkpoint``, from :mod:`tasks.captioning.train` or an official
   RLCF release); optionally train the whole LM (``captioner.train_lm``) or add peft LoRA adapters
   (``captioner.lora``);
2. training features (cached, shared with the supervised run): the captioner's CLIP image embeddings, the
   reward CLIP's image embeddings, for ``gt_contrastive`` the mined hard-negative neighbours and one row per
   ground-truth caption (``data.rows``), for VLRM-RS the ``Phi`` CLIP's embeddings (``vlrm.phi``), for an ITM
   ``sim`` the images themselves (``vlrm.sim=itm``, ``vlrm.itm.path``);
3. ``gt_contrastive`` only, first stage: discriminator pre-training (``gt.disc_pretrain.steps``, saved to
   ``<out>/discriminator-pretrained.pt`` and reused) or loading ``gt.disc_checkpoint``
   (also ``python -m tasks.caption_rl.pretrain_disc``);
4. train with the recipe (:mod:`.gt_contrastive`, :mod:`.vlrm`) through :func:`.loop.train_rl`: resumable
   (``<run.out_dir>/rl-latest.pt``), logs in ``train_log.jsonl``;
5. evaluate on the test split (``eval``, presets ``vlrm`` / ``chaffin`` in :mod:`.presets`): CLIP Recall,
   image-to-text recall, Self-BLEU, vocabulary, length, COCO metrics; ``summary.json`` and ``captioner-rl.pt``
   (loadable by ``tasks.captioning.checkpoint.load_captioner``).
"""
from __future__ import annotations

import argparse
import json
import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

import torch

import rlcf

from ..captioning.checkpoint import load_captioner
from ..captioning.model import PrefixCaptioner
from ..common.clip import build_clip, resolve_device
from ..common.config import dump_config
from ..common.data import MissingDataError, require_path
from .common import Recipe
from .config import (
    DEFAULTS,
    RECIPES,
    build_recipe,
    disc_pretrain_config,
    load_rl_config,
    loop_config,
    prepare_captioner,
)
from .data import RLData
from .decoding import resolve_decoding
from .discriminator import CLIPDiscriminator, load_discriminator, save_discriminator
from .presets import load_named_clip, resolve_eval

logger = logging.getLogger(__name__)

__all__ = ["RECIPES", "DEFAULTS", "Setup", "setup", "run_disc_pretraining", "prepare_captioner", "build_recipe",
           "loop_config", "load_rl_config", "main"]


@dataclass
class Setup:
    """Everything a run builds from its config before training."""

    cfg: dict
    data: RLData
    captioner: PrefixCaptioner
    reward: rlcf.CLIPReward
    recipe: Recipe | None
    evaluate: Callable[[int], dict] | None
    out: Path


def _feature_data(items: list, spec_prefix: dict, prefix_clip: tuple, spec_other: dict, other_clip: tuple,
                  d: dict, images_root: str, neighbours: int, device: torch.device, workers: int,
                  **kwargs: Any) -> RLData:
    from .data import build_feature_data

    names = {"dataset": Path(d["annotations"]).stem, "split": d["split"], "annotations": str(d["annotations"]),
             "prefix_arch": spec_prefix["arch"], "prefix_weights": str(spec_prefix.get("pretrained")),
             "reward_arch": spec_other["arch"], "reward_weights": str(spec_other.get("pretrained"))}
    return build_feature_data(items, prefix_clip, other_clip, images_root, d["feature_dir"], names, neighbours,
                              d.get("neighbour_keys", "caption"), device, workers, **kwargs)


def _check_inputs(cfg: dict, with_eval: bool = True) -> None:
    d, c, e, v = cfg["data"], cfg["captioner"], cfg["eval"], cfg["vlrm"]
    require_path(d["annotations"], "training annotations", "Set data.annotations (see scripts/train_rl_gt_coco.sh).")
    require_path(d["images_root"], "training images folder", "Set data.images_root.")
    if with_eval and e["enabled"]:
        require_path(e["annotations"], "evaluation annotations", "Set eval.annotations or eval.enabled=false.")
    require_path(c["checkpoint"], "supervised captioner checkpoint", "Train one with scripts/train_clipcap_coco.sh.")
    if cfg["recipe"] != "gt_contrastive" and v["sim"] == "itm":
        from .similarity import ITM_HINT

        require_path(Path(v["itm"]["path"]) / "config.json", "ITM model (BLIP-2) folder",
                     ITM_HINT.format(path=v["itm"]["path"]) + " Or set vlrm.sim=clip.")
    from .check import problems

    found = problems(cfg if with_eval else {**cfg, "eval": {**e, "enabled": False}})
    if found:   # the annotations open and their first and random images resolve, before any model is loaded
        raise MissingDataError("; ".join(found))


def setup(cfg: dict, with_eval: bool = True, with_recipe: bool = True) -> Setup:
    """Features, captioner, reward models, recipe and evaluator of a run config (the CLI's steps 1-2 and 5)."""
    from ..captioning.data import load_annotations
    from .evaluate import EvalSet, make_evaluator
    from .similarity import ITMSimilarity, load_blip2_itm

    recipe_name = cfg["recipe"]
    r = cfg["run"]
    if r.get("threads"):
        torch.set_num_threads(int(r["threads"]))
    device = resolve_device(r["device"])
    torch.manual_seed(r["seed"])
    _check_inputs(cfg, with_eval)
    out = Path(r["out_dir"])
    out.mkdir(parents=True, exist_ok=True)
    d, c, v = cfg["data"], cfg["captioner"], cfg["vlrm"]
    pclip, ppre, _ = build_clip(cfg["model"], device)
    rclip, rpre, rtok = build_clip(cfg["reward"], device)
    similarity, pixel_transform, extra, phi = None, None, {}, None
    vlrm = recipe_name != "gt_contrastive"
    if vlrm and v["sim"] == "itm":
        itm, itok, proc = load_blip2_itm(v["itm"]["path"], device, getattr(torch, v["itm"]["dtype"]))
        similarity = ITMSimilarity(itm, itok, float(v["itm_weight"]), int(v["itm"]["batch_size"]),
                                   int(v["itm"]["max_length"]))
        pixel_transform = lambda im: proc(images=im, return_tensors="pt")["pixel_values"][0]   # noqa: E731
    if recipe_name == "vlrm_retrieval" and v["phi"].get("arch"):
        f = v["phi"]
        fclip, fpre, ftok = load_named_clip(f["arch"], f.get("tag"), f.get("pretrained"), device, f.get("config_file"))
        extra["phi"] = (fclip, fpre, f["arch"], str(f.get("pretrained")))
        phi = rlcf.CLIPReward(fclip, ftok)
    items = load_annotations(d["annotations"], d["split"], merge_restval=True)[:d["limit"]]
    nb = int(d["neighbours"]) if recipe_name == "gt_contrastive" else 0
    data = _feature_data(items, cfg["model"], (pclip, ppre), cfg["reward"], (rclip, rpre, rtok), d, d["images_root"],
                         nb, device, r["workers"], extra_clips=extra, pixel_transform=pixel_transform)
    if recipe_name == "gt_contrastive" and d["rows"] == "caption":
        data = data.caption_rows()
        logger.info("%d caption rows over %d images (one row per ground-truth caption)", len(data), data.num_images)
    captioner = load_captioner(c["checkpoint"], c["lm"], device, getattr(torch, c["lm_dtype"]))
    captioner.configure(max_new_tokens=c["max_new_tokens"], stop_token=c["stop_token"])
    captioner = prepare_captioner(captioner, c, recipe_name)
    reward = rlcf.CLIPReward(rclip, rtok)
    evaluate = None
    if with_eval and cfg["eval"]["enabled"]:
        e = resolve_eval(cfg["eval"])
        eclip, epre, etok = load_named_clip(e["arch"], e["tag"], e["pretrained"], device, e["config_file"])
        eitems = load_annotations(e["annotations"], e["split"])[:e["limit"]]
        ed = _feature_data(eitems, cfg["model"], (pclip, ppre), e, (eclip, epre, etok),
                           {**e, "feature_dir": d["feature_dir"]}, e["images_root"], 0, device, r["workers"])
        evaluate = make_evaluator(captioner, EvalSet(ed.prefix_feats, ed.reward_feats, ed.references, ed.image_ids),
                                  eclip, etok, out, resolve_decoding(e["decoding"], name="eval.decoding"), e["coco"],
                                  {"tokenizer": e["tokenizer"], "meteor": "auto" if e["meteor"] is None
                                   else e["meteor"]}, e["self_bleu_n"], bool(e["strip_periods"]))
    s = Setup(cfg, data, captioner, reward, None, evaluate, out)
    if with_recipe:
        disc = None
        if recipe_name == "gt_contrastive" and cfg["gt"]["discriminator"]:
            disc = pretrained_discriminator(s, cfg)
        s.recipe = build_recipe(recipe_name, captioner, reward, cfg, similarity, phi, disc)
    return s


def _disc_path(cfg: dict) -> Path:
    return Path(cfg["gt"]["disc_pretrain"]["out"] or Path(cfg["run"]["out_dir"]) / "discriminator-pretrained.pt")


def run_disc_pretraining(s: Setup, cfg: dict, force: bool = False) -> tuple[Path, list[dict]]:
    """Pre-train the discriminator on ``s`` (GT vs the captioner's policy-decoded captions) and save it; an existing
    file is reused unless ``force``. Returns ``(path, per-step statistics)``."""
    from .gt_contrastive import GTContrastiveConfig
    from .disc_pretraining import pretrain_discriminator

    path = _disc_path(cfg)
    if path.is_file() and not force:
        logger.info("reusing the pre-trained discriminator %s", path)
        return path, []
    g = cfg["gt"]
    pcfg = disc_pretrain_config(cfg)
    dim = int(s.reward.encode_texts(["a"]).shape[-1])
    disc = CLIPDiscriminator(dim, tuple(g["disc_hidden"])).to(s.reward.device)
    policy = GTContrastiveConfig(policy_decoding=g["decoding"]["policy"]).policy_decoding
    data = s.data if s.data.rows is not None else s.data.caption_rows()
    history = pretrain_discriminator(disc, s.captioner, s.reward, data, pcfg, policy, float(g["disc_lr"]),
                                     bool(g["strip_periods"]))
    save_discriminator(disc, path, {"steps": pcfg.steps, "batch_size": pcfg.batch_size,
                                    "final": history[-1] if history else None})
    return path, history


def pretrained_discriminator(s: Setup, cfg: dict) -> CLIPDiscriminator | None:
    """The recipe's starting discriminator: ``gt.disc_checkpoint``, else the pre-training stage when
    ``gt.disc_pretrain.steps > 0``, else ``None`` (random initialisation)."""
    g = cfg["gt"]
    dim = int(s.reward.encode_texts(["a"]).shape[-1])
    if g["disc_checkpoint"]:
        return load_discriminator(g["disc_checkpoint"], dim, tuple(g["disc_hidden"]), s.reward.device)
    if int(g["disc_pretrain"]["steps"]) > 0:
        path, _ = run_disc_pretraining(s, cfg)
        return load_discriminator(path, dim, tuple(g["disc_hidden"]), s.reward.device)
    return None


def main(argv: Sequence[str] | None = None) -> dict:
    """CLI (see the module docstring); returns the summary. An expected error (missing data or weights:
    :class:`tasks.common.data.UserError`) is one line on stderr and exit code 2."""
    from ..common.cli import expected_errors, setup_logging

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--recipe", choices=RECIPES, default=None, help="overrides the config's recipe")
    ap.add_argument("--config", help="YAML file of deltas over the defaults (configs/caption_rl/*.yaml)")
    ap.add_argument("overrides", nargs="*", help="key.sub=value overrides, e.g. optim.steps=10 data.limit=256")
    ap.add_argument("--verbose", action="store_true", help="third-party INFO logs too")
    ap.add_argument("--debug", action="store_true", help="full tracebacks for expected errors")
    args = ap.parse_args(argv)
    setup_logging(args.verbose)
    with expected_errors(args.debug):
        return _run(args)


def _run(args: argparse.Namespace) -> dict:
    from .loop import train_rl

    cfg = load_rl_config(args.config, args.overrides, args.recipe)
    t0 = time.time()
    Path(cfg["run"]["out_dir"]).mkdir(parents=True, exist_ok=True)
    dump_config(cfg, Path(cfg["run"]["out_dir"]) / "config.yaml")
    s = setup(cfg)
    lcfg = loop_config(cfg["recipe"], cfg)
    history = train_rl(s.recipe, s.data, lcfg, s.out, evaluate=s.evaluate, lm_path=cfg["captioner"]["lm"])
    evals = [json.loads(x) for x in (s.out / "eval_log.jsonl").read_text().splitlines()] if s.evaluate else []
    summary = {"recipe": cfg["recipe"], "steps_run": len(history), "steps": lcfg.steps, "seconds": time.time() - t0,
               "n_train": len(s.data), "n_images": s.data.num_images, "final_eval": evals[-1] if evals else None,
               "out_dir": str(s.out)}
    (s.out / "summary.json").write_text(json.dumps(summary, indent=2, default=str))
    logger.info("done: %s", {k: v for k, v in summary.items() if k != "final_eval"})
    return summary


if __name__ == "__main__":
    main()
