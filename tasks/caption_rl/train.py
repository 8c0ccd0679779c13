"""RL training of a prefix captioner with CLIP rewards: command line.

``python -m tasks.caption_rl.train --recipe gt_contrastive|vlrm|vlrm_retrieval [--config configs/caption_rl/X.yaml]
[key.sub=value ...]`` (what ``scripts/train_rl_{gt,vlrm}_coco.sh`` run; the recipes: :func:`.recipe.list_recipes`).

1. load the supervised captioner (``captioner.checkpoint``, from :mod:`tasks.captioning.train` or an official
   RLCF release); optionally train the whole LM (``captioner.train_lm``) or add peft LoRA adapters
   (``captioner.lora``);
2. training features (cached, shared with the supervised run): the captioner's CLIP image embeddings, the
   reward CLIP's image embeddings, and what the recipe needs (:meth:`.recipe.Recipe.needs`): for ``gt_contrastive``
   the mined hard-negative neighbours and one row per ground-truth caption (``data.rows``), for VLRM-RS the ``Phi``
   CLIP's embeddings (``vlrm.phi``), for an ITM ``sim`` the images themselves (``vlrm.sim=itm``, ``vlrm.itm.path``);
3. the recipe from its config section (:meth:`.recipe.Recipe.from_config`); ``gt_contrastive`` first pre-trains
   its discriminator (``gt.disc_pretrain.steps``, saved to ``<out>/discriminator-pretrained.pt`` and reused) or
   loads ``gt.disc_checkpoint`` (also ``python -m tasks.caption_rl.gt.pretrain_disc``);
4. train with the recipe (:mod:`.gt`, :mod:`.vlrm`) through :func:`.loop.train_rl`: resumable
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
from pathlib import Path
from typing import Any, Sequence

import torch

import rlcf

from ..captioning.checkpoint import load_captioner
from ..common import cli
from ..common.clip import build_clip, resolve_device
from ..common.config import dump_config
from ..common.data import MissingDataError, require_path
from ..common.precision import resolve_dtype
from .config import defaults, load_rl_config, loop_config, meanings, prepare_captioner
from .data import RLData
from .decoding import resolve_decoding
from .presets import load_named_clip, resolve_eval
from .recipe import Recipe, Setup, get_recipe, load_recipes

logger = logging.getLogger(__name__)

__all__ = ["setup", "main"]


def _feature_data(items: list, spec_prefix: dict, prefix_clip: tuple, spec_other: dict, other_clip: tuple,
                  d: dict, images_root: str, neighbours: int, device: torch.device, workers: int,
                  **kwargs: Any) -> RLData:
    from .data import build_feature_data

    names = {"dataset": Path(d["annotations"]).stem, "split": d["split"], "annotations": str(d["annotations"]),
             "prefix_arch": spec_prefix["arch"], "prefix_weights": str(spec_prefix.get("pretrained")),
             "reward_arch": spec_other["arch"], "reward_weights": str(spec_other.get("pretrained"))}
    return build_feature_data(items, prefix_clip, other_clip, images_root, d["feature_dir"], names, neighbours,
                              d.get("neighbour_keys", "caption"), device, workers, **kwargs)


def _check_inputs(cfg: dict, recipe: type[Recipe], with_eval: bool = True) -> None:
    d, c, e = cfg["data"], cfg["captioner"], cfg["eval"]
    require_path(d["annotations"], "training annotations", "Set data.annotations (see scripts/train_rl_gt_coco.sh).")
    require_path(d["images_root"], "training images folder", "Set data.images_root.")
    if with_eval and e["enabled"]:
        require_path(e["annotations"], "evaluation annotations", "Set eval.annotations or eval.enabled=false.")
    require_path(c["checkpoint"], "supervised captioner checkpoint", "Train one with scripts/train_clipcap_coco.sh.")
    recipe.check_inputs(cfg)
    from .check import preflight, problems

    found = problems(cfg if with_eval else {**cfg, "eval": {**e, "enabled": False}}) + preflight(cfg)
    if found:   # the annotations open and their first and random images resolve, before any model is loaded
        raise MissingDataError("; ".join(found))


def setup(cfg: dict, with_eval: bool = True, with_recipe: bool = True) -> Setup:
    """Features, captioner, reward models, recipe and evaluator of a run config (the CLI's steps 1-3 and 5)."""
    from ..captioning.data import load_annotations
    from .evaluate import EvalSet, make_evaluator

    recipe = get_recipe(cfg["recipe"])
    r = cfg["run"]
    if r.get("threads"):
        torch.set_num_threads(int(r["threads"]))
    device = resolve_device(r["device"])
    torch.manual_seed(r["seed"])
    _check_inputs(cfg, recipe, with_eval)
    out = Path(r["out_dir"])
    out.mkdir(parents=True, exist_ok=True)
    d, c = cfg["data"], cfg["captioner"]
    pclip, ppre, _ = build_clip(cfg["model"], device)
    rclip, rpre, rtok = build_clip(cfg["reward"], device)
    needs = recipe.needs(cfg, device)
    items = load_annotations(d["annotations"], d["split"], merge_restval=True)[:d["limit"]]
    data = _feature_data(items, cfg["model"], (pclip, ppre), cfg["reward"], (rclip, rpre, rtok), d, d["images_root"],
                         needs.neighbours, device, r["workers"], extra_clips=needs.extra_clips,
                         pixel_transform=needs.pixel_transform)
    if needs.caption_rows:
        data = data.caption_rows()
        logger.info("%d caption rows over %d images (one row per ground-truth caption)", len(data), data.num_images)
    captioner = load_captioner(c["checkpoint"], c["lm"], device,
                               resolve_dtype(c["lm_dtype"], device, key="captioner.lm_dtype"))
    captioner.configure(max_new_tokens=c["max_new_tokens"], stop_token=c["stop_token"])
    captioner = prepare_captioner(captioner, c, cfg["recipe"])
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
    s = Setup(cfg, data, captioner, reward, None, evaluate, out, needs)
    if with_recipe:
        s.recipe = recipe.from_config(cfg, s)
    return s


def main(argv: Sequence[str] | None = None) -> dict:
    """CLI (see the module docstring); returns the summary. An expected error (missing data or weights:
    :class:`tasks.common.data.UserError`) is one line on stderr and exit code 2."""
    args = cli.parse_command_line(
        argv, __doc__, "YAML file of deltas over the defaults (configs/caption_rl/*.yaml)",
        "key.sub=value overrides, e.g. optim.steps=10 data.limit=256",
        lambda ap: ap.add_argument("--recipe", choices=load_recipes(), default=None,
                                   help="overrides the config's recipe"),
        epilog=cli.config_epilog(defaults(), meanings()))
    with cli.expected_errors(args.debug):
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
