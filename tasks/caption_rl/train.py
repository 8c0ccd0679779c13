"""RL training of a prefix captioner with CLIP rewards: command line.

``python -m tasks.caption_rl.train --recipe gt_contrastive|vlrm|vlrm_retrieval [--config configs/caption_rl/X.yaml]
[key.sub=value ...]`` (what ``scripts/train_rl_{gt,vlrm}_coco.sh`` run).

1. load the supervised captioner (``captioner.checkpoint``, from :mod:`tasks.captioning.train` or an official
   RLCF release); optionally make the LM trainable or add LoRA adapters (``captioner.lora``);
2. training features (cached, shared with the supervised run): the captioner's CLIP image embeddings, the
   reward CLIP's image embeddings, and for ``gt_contrastive`` the mined hard-negative neighbours;
3. train with the recipe (:mod:`.gt_contrastive`, :mod:`.vlrm`) through :func:`.loop.train_rl`: resumable
   (``<run.out_dir>/rl-latest.pt``), logs in ``train_log.jsonl``;
4. evaluate on the test split (``eval``): CLIP Recall, image-to-text recall, Self-BLEU, vocabulary, length, COCO
   metrics; ``summary.json`` and ``captioner-rl.pt`` (loadable by ``tasks.captioning.checkpoint.load_captioner``).
"""
from __future__ import annotations

import argparse
import json
import logging
import time
from dataclasses import asdict, fields
from pathlib import Path
from typing import Any, Sequence

import torch

import rlcf

from ..captioning.checkpoint import load_captioner
from ..captioning.model import PrefixCaptioner
from ..common.clip import build_clip, resolve_device
from ..common.config import dump_config, load_config
from ..common.data import require_path
from .common import Recipe
from .gt_contrastive import GTContrastiveConfig, GTContrastiveRecipe
from .loop import LoopConfig
from .lora import add_lora, set_active
from .vlrm import VLRMConfig, VLRMRecipe

logger = logging.getLogger(__name__)

__all__ = ["RECIPES", "DEFAULTS", "prepare_captioner", "build_recipe", "loop_config", "main"]

RECIPES = ("gt_contrastive", "vlrm", "vlrm_retrieval")
_P = "${PRETRAINED:-pretrained}"
_D = "${DATA_ROOT:-data}"


def _plain(obj: Any) -> dict:
    """Dataclass defaults as YAML-friendly values (tuples -> lists)."""
    return {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(obj).items()}


DEFAULTS: dict[str, Any] = {
    "recipe": "gt_contrastive",
    "captioner": {"checkpoint": "${OUTPUT:-output}/clipcap_opt125m_transformer_coco_01/ckpt-latest.pt",
                  "lm": f"{_P}/opt-125m", "lm_dtype": "float32", "max_new_tokens": 50, "stop_token": "\n",
                  "train_lm": False,
                  "lora": {"enabled": False, "targets": ["q_proj", "v_proj"], "r": 8, "alpha": 16.0, "policy": True,
                           "value": False}},
    "model": {"arch": "ViT-B-16", "pretrained": f"{_P}/clip/ViT-B-16.pt", "config_file": None},
    "reward": {"arch": "ViT-B-32", "pretrained": f"{_P}/clip/ViT-B-32.pt", "config_file": None},
    "data": {"annotations": f"{_D}/coco/annotations/coco_karpathy_train.json", "images_root": f"{_D}/coco/images",
             "split": "train", "limit": None, "feature_dir": "${OUTPUT:-output}/features", "neighbours": 5,
             "neighbour_keys": "caption", "caption_choice": "first"},
    "eval": {"enabled": True, "arch": "ViT-B-32", "pretrained": f"{_P}/clip/ViT-B-32.pt", "config_file": None,
             "annotations": f"{_D}/coco/annotations/coco_karpathy_test.json", "images_root": f"{_D}/coco/images",
             "split": "test", "limit": None, "num_beams": 5, "coco": True, "meteor": None, "tokenizer": "auto"},
    "gt": _plain(GTContrastiveConfig()),
    "vlrm": {**_plain(VLRMConfig()), "penalties": {"bad": True, "repeat": True, "years": True,
                                                    "bad_phrases_file": None, "extra_bad_phrases": [],
                                                    "drop_bad_phrases": []}},
    "optim": {k: v for k, v in _plain(LoopConfig()).items() if k not in ("negatives", "need_captions",
                                                                          "caption_choice", "seed")},
    "run": {"out_dir": "output/caption_rl/run", "device": "auto", "seed": 0, "workers": 4, "threads": None},
}


def _dataclass(cls: type, values: dict) -> Any:
    """``cls(**values)`` for its own fields: lists become tuples, strings of float fields become floats (YAML 1.1
    reads ``1e-3`` as a string, and a ``None`` default gives the override no type to be checked against)."""
    types = {f.name: str(f.type) for f in fields(cls)}
    out = {}
    for k, v in values.items():
        if k not in types:
            continue
        if isinstance(v, str) and "float" in types[k]:
            v = float(v)
        out[k] = tuple(v) if isinstance(v, list) else v
    return cls(**out)


def prepare_captioner(captioner: PrefixCaptioner, spec: dict, recipe: str) -> PrefixCaptioner:
    """Apply ``captioner.train_lm`` / ``captioner.lora`` (adapters ``policy`` and, for VLRM, ``value``)."""
    if spec.get("train_lm"):
        captioner.train_lm = True
        captioner.lm.requires_grad_(True)
    lora = spec.get("lora") or {}
    if lora.get("enabled"):
        adapters = (["policy"] if lora.get("policy", True) else []) + \
                   (["value"] if lora.get("value") and recipe.startswith("vlrm") else [])
        if adapters:
            add_lora(captioner.lm, tuple(lora["targets"]), tuple(adapters), int(lora["r"]), float(lora["alpha"]))
            set_active(captioner.lm, ("policy",) if "policy" in adapters else ())
    return captioner


def build_recipe(recipe: str, captioner: PrefixCaptioner, reward: rlcf.CLIPReward, cfg: dict) -> Recipe:
    """The recipe object named ``recipe`` with the ``gt`` / ``vlrm`` config sections."""
    if recipe not in RECIPES:
        raise KeyError(f"unknown recipe '{recipe}'; choose from {list(RECIPES)}")
    if recipe == "gt_contrastive":
        return GTContrastiveRecipe(captioner, reward, _dataclass(GTContrastiveConfig, cfg["gt"]))
    v = dict(cfg["vlrm"])
    v["retrieval"] = recipe == "vlrm_retrieval" or bool(v.get("retrieval"))
    v["value_adapter"] = bool((cfg["captioner"].get("lora") or {}).get("enabled")
                              and (cfg["captioner"].get("lora") or {}).get("value"))
    return VLRMRecipe(captioner, reward, _dataclass(VLRMConfig, v))


def loop_config(recipe: str, cfg: dict) -> LoopConfig:
    extra = {"seed": cfg["run"]["seed"], "caption_choice": cfg["data"]["caption_choice"],
             "need_captions": recipe == "gt_contrastive",
             "negatives": tuple(cfg["gt"]["negatives"]) if recipe == "gt_contrastive" else ()}
    return _dataclass(LoopConfig, {**cfg["optim"], **extra})


def _feature_data(items: list, spec_prefix: dict, prefix_clip: tuple, spec_other: dict, other_clip: tuple,
                  d: dict, images_root: str, neighbours: int, device: torch.device, workers: int):
    from .data import build_feature_data

    names = {"dataset": Path(d["annotations"]).stem, "split": d["split"], "annotations": str(d["annotations"]),
             "prefix_arch": spec_prefix["arch"], "prefix_weights": str(spec_prefix.get("pretrained")),
             "reward_arch": spec_other["arch"], "reward_weights": str(spec_other.get("pretrained"))}
    return build_feature_data(items, prefix_clip, other_clip, images_root, d["feature_dir"], names, neighbours,
                              d.get("neighbour_keys", "caption"), device, workers)


def main(argv: Sequence[str] | None = None) -> dict:
    """CLI (see the module docstring); returns the summary."""
    from ..captioning.data import load_annotations
    from .evaluate import EvalSet, make_evaluator
    from .loop import train_rl

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--recipe", choices=RECIPES, default=None, help="overrides the config's recipe")
    ap.add_argument("--config", help="YAML file of deltas over the defaults (configs/caption_rl/*.yaml)")
    ap.add_argument("overrides", nargs="*", help="key.sub=value overrides, e.g. optim.steps=10 data.limit=256")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    cfg = load_config(DEFAULTS, args.config, args.overrides)
    recipe_name = args.recipe or cfg["recipe"]
    cfg["recipe"] = recipe_name
    if recipe_name not in RECIPES:
        raise KeyError(f"unknown recipe '{recipe_name}'; choose from {list(RECIPES)}")
    r = cfg["run"]
    if r.get("threads"):
        torch.set_num_threads(int(r["threads"]))
    device = resolve_device(r["device"])
    torch.manual_seed(r["seed"])
    out = Path(r["out_dir"])
    d, c, e = cfg["data"], cfg["captioner"], cfg["eval"]
    require_path(d["annotations"], "training annotations", "Set data.annotations (see scripts/train_rl_gt_coco.sh).")
    require_path(d["images_root"], "training images folder", "Set data.images_root.")
    if e["enabled"]:
        require_path(e["annotations"], "evaluation annotations", "Set eval.annotations or eval.enabled=false.")
    require_path(c["checkpoint"], "supervised captioner checkpoint", "Train one with scripts/train_clipcap_coco.sh.")
    out.mkdir(parents=True, exist_ok=True)
    dump_config(cfg, out / "config.yaml")
    t0 = time.time()
    pclip, ppre, _ = build_clip(cfg["model"], device)
    rclip, rpre, rtok = build_clip(cfg["reward"], device)
    items = load_annotations(d["annotations"], d["split"], merge_restval=True)[:d["limit"]]
    nb = int(d["neighbours"]) if recipe_name == "gt_contrastive" else 0
    data = _feature_data(items, cfg["model"], (pclip, ppre), cfg["reward"], (rclip, rpre, rtok), d, d["images_root"],
                         nb, device, r["workers"])
    captioner = load_captioner(c["checkpoint"], c["lm"], device, getattr(torch, c["lm_dtype"]))
    captioner.configure(max_new_tokens=c["max_new_tokens"], stop_token=c["stop_token"])
    recipe = build_recipe(recipe_name, prepare_captioner(captioner, c, recipe_name), rlcf.CLIPReward(rclip, rtok), cfg)
    evaluate = None
    if e["enabled"]:
        eclip, epre, etok = build_clip(e, device)
        eitems = load_annotations(e["annotations"], e["split"])[:e["limit"]]
        ed = _feature_data(eitems, cfg["model"], (pclip, ppre), e, (eclip, epre, etok),
                           {**e, "feature_dir": d["feature_dir"]}, e["images_root"], 0, device, r["workers"])
        evaluate = make_evaluator(captioner, EvalSet(ed.prefix_feats, ed.reward_feats, ed.references, ed.image_ids),
                                  eclip, etok, out, e["num_beams"], e["coco"],
                                  {"tokenizer": e["tokenizer"], "meteor": "auto" if e["meteor"] is None
                                   else e["meteor"]})
    lcfg = loop_config(recipe_name, cfg)
    history = train_rl(recipe, data, lcfg, out, evaluate=evaluate, lm_path=c["lm"])
    evals = [json.loads(x) for x in (out / "eval_log.jsonl").read_text().splitlines()] if evaluate else []
    summary = {"recipe": recipe_name, "steps_run": len(history), "steps": lcfg.steps, "seconds": time.time() - t0,
               "n_train": len(data), "final_eval": evals[-1] if evals else None, "out_dir": str(out)}
    (out / "summary.json").write_text(json.dumps(summary, indent=2, default=str))
    logger.info("done: %s", {k: v for k, v in summary.items() if k != "final_eval"})
    return summary


if __name__ == "__main__":
    main()
