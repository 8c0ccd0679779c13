"""Configuration of caption RL runs: defaults, presets, and turning a config into the captioner and loop options.

A run config is :func:`defaults` <- a YAML file of deltas (``configs/caption_rl/*.yaml``, ``base:`` allowed) <-
``key.sub=value`` overrides (:func:`tasks.common.config.load_config`). Each recipe contributes its own section
(``gt``, ``vlrm``: :meth:`Recipe.defaults`). Decoding settings and the evaluation are *preset + overrides* sections:
``null`` fields take the named preset's value (:mod:`.decoding`, :mod:`.presets`).
"""
from __future__ import annotations

from typing import Any, Sequence

from tasks.captioning.model import PrefixCaptioner
from tasks.common.config import ConfigKeyError, ConfigValueError, load_config

from .decoding import DECODING_SECTION
from .loop import LoopConfig
from .lora import add_lora, set_active
from .presets import EVAL_SECTION
from .recipe import dataclass_from, get_recipe, list_recipes, load_recipes, plain_section

__all__ = ["defaults", "load_rl_config", "prepare_captioner", "loop_config"]

_P = "${PRETRAINED:-pretrained}"
_D = "${DATA_ROOT:-data}"


def defaults() -> dict[str, Any]:
    """The defaults of a run config: the shared sections and every registered recipe's own."""
    sections: dict[str, Any] = {}
    for name in load_recipes():
        cls = get_recipe(name)
        sections.setdefault(cls.section, cls.defaults())
    return {
        "recipe": "gt_contrastive",
        "captioner": {"checkpoint": "${OUTPUT:-output}/clipcap_opt125m_transformer_coco_01/ckpt-latest.pt",
                      "lm": f"{_P}/opt-125m", "lm_dtype": "float32", "max_new_tokens": 50, "stop_token": "\n",
                      "train_lm": False,
                      "lora": {"enabled": False, "targets": ["q_proj", "v_proj"], "r": 8, "alpha": 16.0,
                               "policy": True, "value": False}},
        "model": {"arch": "ViT-B-16", "pretrained": f"{_P}/clip/ViT-B-16.pt", "config_file": None},
        "reward": {"arch": "ViT-B-32", "pretrained": f"{_P}/clip/ViT-B-32.pt", "config_file": None},
        "data": {"annotations": f"{_D}/coco/annotations/coco_karpathy_train.json", "images_root": f"{_D}/coco/images",
                 "split": "train", "limit": None, "feature_dir": "${OUTPUT:-output}/features", "neighbours": 5,
                 "neighbour_keys": "caption", "rows": "caption", "caption_choice": "first"},
        "eval": {"enabled": True, **EVAL_SECTION, "decoding": dict(DECODING_SECTION),
                 "annotations": f"{_D}/coco/annotations/coco_karpathy_test.json", "images_root": f"{_D}/coco/images",
                 "split": "test", "limit": None, "coco": True, "meteor": None, "tokenizer": "auto"},
        **sections,
        "optim": {k: v for k, v in plain_section(LoopConfig()).items() if k not in ("negatives", "need_captions",
                                                                                    "caption_choice", "seed")},
        "run": {"out_dir": "output/caption_rl/run", "device": "auto", "seed": 0, "workers": 4, "threads": None},
    }


def load_rl_config(path: str | None = None, overrides: Sequence[str] = (), recipe: str | None = None) -> dict:
    """:func:`defaults` <- ``path`` <- ``overrides``; ``recipe`` (the CLI's ``--recipe``) wins over the file's."""
    cfg = load_config(defaults(), path, overrides)
    cfg["recipe"] = recipe or cfg["recipe"]
    if cfg["recipe"] not in list_recipes():
        raise ConfigKeyError(f"unknown recipe '{cfg['recipe']}'; choose from {list_recipes()}")
    if cfg["data"]["rows"] not in ("caption", "image"):
        raise ConfigValueError(f"data.rows must be 'caption' (one row per GT caption) or 'image', "
                               f"got {cfg['data']['rows']!r}")
    return cfg


def prepare_captioner(captioner: PrefixCaptioner, spec: dict, recipe: str) -> PrefixCaptioner:
    """Apply ``captioner.train_lm`` (the whole LM trains, as the official OFA fine-tuning) or ``captioner.lora``
    (peft adapters ``policy`` and, for a recipe that trains one (A2C), ``value`` on a frozen LM)."""
    lora = spec.get("lora") or {}
    if spec.get("train_lm") and lora.get("enabled") and lora.get("policy", True):
        raise ValueError("captioner.train_lm and a policy LoRA (captioner.lora.enabled) exclude each other: LoRA "
                         "trains adapters on a frozen LM; pick one")
    if spec.get("train_lm"):
        captioner.train_lm = True
        captioner.lm.requires_grad_(True)
    if lora.get("enabled"):
        trainable = get_recipe(recipe).lora_adapters
        adapters = (["policy"] if lora.get("policy", True) else []) + \
                   (["value"] if lora.get("value") and "value" in trainable else [])
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


def loop_config(recipe: str, cfg: dict) -> LoopConfig:
    """The loop options of a run: ``optim`` plus what the recipe implies (captions, hard negatives)."""
    cls = get_recipe(recipe)
    extra = {"seed": cfg["run"]["seed"], "caption_choice": cfg["data"]["caption_choice"],
             "need_captions": cls.needs_captions, "negatives": cls.negatives(cfg)}
    return dataclass_from(LoopConfig, {**cfg["optim"], **extra})
