"""Configuration of caption RL runs: defaults, presets, and turning a config into recipe / loop objects.

A run config is :data:`DEFAULTS` <- a YAML file of deltas (``configs/caption_rl/*.yaml``, ``base:`` allowed) <-
``key.sub=value`` overrides (:func:`tasks.common.config.load_config`). Decoding settings and the evaluation are
*preset + overrides* sections: ``null`` fields take the named preset's value (:mod:`.decoding`, :mod:`.presets`).
"""
from __future__ import annotations

from dataclasses import fields
from typing import Any, Sequence

import rlcf
from tasks.captioning.model import PrefixCaptioner
from tasks.common.config import ConfigKeyError, ConfigTypeError, ConfigValueError, load_config

from .common import Recipe
from .decoding import DECODING_SECTION
from .discriminator import CLIPDiscriminator, DiscPretrainConfig
from .gt_contrastive import GTContrastiveConfig, GTContrastiveRecipe
from .loop import LoopConfig
from .lora import add_lora, set_active
from .presets import EVAL_SECTION
from .similarity import Similarity
from .vlrm import VLRMConfig, VLRMRecipe

__all__ = ["RECIPES", "DEFAULTS", "load_rl_config", "dataclass_from", "prepare_captioner", "build_recipe",
           "loop_config", "disc_pretrain_config"]

RECIPES = ("gt_contrastive", "vlrm", "vlrm_retrieval")
_P = "${PRETRAINED:-pretrained}"
_D = "${DATA_ROOT:-data}"


def _plain(obj: Any, drop: Sequence[str] = ()) -> dict:
    """Dataclass values as YAML-friendly values (tuples -> lists), without the ``drop`` fields."""
    return {f.name: list(v) if isinstance(v := getattr(obj, f.name), tuple) else v
            for f in fields(obj) if f.name not in drop}


def _decoding(preset: str) -> dict[str, Any]:
    return {**DECODING_SECTION, "preset": preset}


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
             "neighbour_keys": "caption", "rows": "caption", "caption_choice": "first"},
    "eval": {"enabled": True, **EVAL_SECTION, "decoding": dict(DECODING_SECTION),
             "annotations": f"{_D}/coco/annotations/coco_karpathy_test.json", "images_root": f"{_D}/coco/images",
             "split": "test", "limit": None, "coco": True, "meteor": None, "tokenizer": "auto"},
    "gt": {**_plain(GTContrastiveConfig(), drop=("policy_decoding", "baseline_decoding")),
           "decoding": {"policy": _decoding("chaffin_policy"), "baseline": _decoding("chaffin_baseline")},
           "disc_pretrain": _plain(DiscPretrainConfig()), "disc_checkpoint": None},
    "vlrm": {**_plain(VLRMConfig(), drop=("rollout_decoding",)),
             "decoding": {"rollout": _decoding("vlrm_rollout")},
             "penalties": {"bad": True, "repeat": True, "years": True, "bad_phrases_file": None,
                           "extra_bad_phrases": [], "drop_bad_phrases": []},
             "itm": {"path": f"{_P}/blip2-itm-vit-g", "dtype": "float32", "batch_size": 64, "max_length": 64},
             "phi": {"arch": None, "tag": None, "pretrained": None, "config_file": None}},
    "optim": {k: v for k, v in _plain(LoopConfig()).items() if k not in ("negatives", "need_captions",
                                                                          "caption_choice", "seed")},
    "run": {"out_dir": "output/caption_rl/run", "device": "auto", "seed": 0, "workers": 4, "threads": None},
}


# keys of the configs before the decoding presets (issue 18) and where they went
MOVED = {
    **{f"gt.{k}": f"gt.decoding.policy.{k} (or a named gt.decoding.policy.preset)"
       for k in ("num_beams", "no_repeat_ngram_size", "temperature", "top_k")},
    "gt.candidates": "gt.decoding.policy.mode (beam | sample; or a named gt.decoding.policy.preset)",
    **{f"vlrm.{k}": f"vlrm.decoding.rollout.{k} (or a named vlrm.decoding.rollout.preset)"
       for k in ("top_k", "temperature", "max_new_tokens")},
    "eval.num_beams": "eval.decoding.num_beams",
}


def load_rl_config(path: str | None = None, overrides: Sequence[str] = (), recipe: str | None = None) -> dict:
    """:data:`DEFAULTS` <- ``path`` <- ``overrides``; ``recipe`` (the CLI's ``--recipe``) wins over the file's."""
    try:
        cfg = load_config(DEFAULTS, path, overrides, moved=MOVED)
    except ConfigTypeError as e:
        if "'gt.gt_term'" in str(e):   # a boolean before issue 18
            raise ConfigTypeError(f"{e}: gt.gt_term is now paper | none | public (the old true is paper, false "
                                  "is none)") from None
        raise
    cfg["recipe"] = recipe or cfg["recipe"]
    if cfg["recipe"] not in RECIPES:
        raise ConfigKeyError(f"unknown recipe '{cfg['recipe']}'; choose from {list(RECIPES)}")
    if cfg["data"]["rows"] not in ("caption", "image"):
        raise ConfigValueError(f"data.rows must be 'caption' (one row per GT caption) or 'image', "
                               f"got {cfg['data']['rows']!r}")
    return cfg


def dataclass_from(cls: type, values: dict, **extra: Any) -> Any:
    """``cls(**values, **extra)`` for its own fields: lists become tuples, strings of float fields become floats
    (YAML 1.1 reads ``1e-3`` as a string, and a ``None`` default gives the override no type to be checked against)."""
    types = {f.name: str(f.type) for f in fields(cls)}
    out = {}
    for k, v in {**values, **extra}.items():
        if k not in types:
            continue
        if isinstance(v, str) and "float" in types[k]:
            v = float(v)
        out[k] = tuple(v) if isinstance(v, list) else v
    return cls(**out)


def prepare_captioner(captioner: PrefixCaptioner, spec: dict, recipe: str) -> PrefixCaptioner:
    """Apply ``captioner.train_lm`` (the whole LM trains, as the official OFA fine-tuning) or ``captioner.lora``
    (peft adapters ``policy`` and, for VLRM, ``value`` on a frozen LM)."""
    lora = spec.get("lora") or {}
    if spec.get("train_lm") and lora.get("enabled") and lora.get("policy", True):
        raise ValueError("captioner.train_lm and a policy LoRA (captioner.lora.enabled) exclude each other: LoRA "
                         "trains adapters on a frozen LM; pick one")
    if spec.get("train_lm"):
        captioner.train_lm = True
        captioner.lm.requires_grad_(True)
    if lora.get("enabled"):
        adapters = (["policy"] if lora.get("policy", True) else []) + \
                   (["value"] if lora.get("value") and recipe.startswith("vlrm") else [])
        if adapters:
            train_lm = captioner.train_lm
            captioner.lm = add_lora(captioner.lm, tuple(lora["targets"]), tuple(adapters), int(lora["r"]),
                                    float(lora["alpha"]))
            if train_lm:   # value-only adapters beside a trained LM: peft froze the base weights
                for n, p in captioner.lm.named_parameters():
                    if ".lora_" not in n:
                        p.requires_grad_(True)
            set_active(captioner.lm, ("policy",) if "policy" in adapters else ())
    return captioner


def build_recipe(recipe: str, captioner: PrefixCaptioner, reward: rlcf.CLIPReward | None, cfg: dict,
                 similarity: Similarity | None = None, phi: rlcf.CLIPReward | None = None,
                 discriminator: CLIPDiscriminator | None = None) -> Recipe:
    """The recipe object named ``recipe`` with the ``gt`` / ``vlrm`` config sections."""
    if recipe not in RECIPES:
        raise KeyError(f"unknown recipe '{recipe}'; choose from {list(RECIPES)}")
    if recipe == "gt_contrastive":
        g = cfg["gt"]
        gcfg = dataclass_from(GTContrastiveConfig, g, policy_decoding=g["decoding"]["policy"],
                              baseline_decoding=g["decoding"]["baseline"])
        return GTContrastiveRecipe(captioner, reward, gcfg, discriminator=discriminator)
    v = dict(cfg["vlrm"])
    lora = cfg["captioner"].get("lora") or {}
    vcfg = dataclass_from(VLRMConfig, v, rollout_decoding=v["decoding"]["rollout"],
                          retrieval=recipe == "vlrm_retrieval" or bool(v.get("retrieval")),
                          value_adapter=bool(lora.get("enabled") and lora.get("value")))
    return VLRMRecipe(captioner, reward, vcfg, similarity=similarity, phi=phi)


def loop_config(recipe: str, cfg: dict) -> LoopConfig:
    """The loop options of a run: ``optim`` plus what the recipe implies (captions, hard negatives)."""
    extra = {"seed": cfg["run"]["seed"], "caption_choice": cfg["data"]["caption_choice"],
             "need_captions": recipe == "gt_contrastive",
             "negatives": tuple(cfg["gt"]["negatives"]) if recipe == "gt_contrastive" else ()}
    return dataclass_from(LoopConfig, {**cfg["optim"], **extra})


def disc_pretrain_config(cfg: dict) -> DiscPretrainConfig:
    """``gt.disc_pretrain`` as a :class:`DiscPretrainConfig`."""
    return dataclass_from(DiscPretrainConfig, cfg["gt"]["disc_pretrain"])
