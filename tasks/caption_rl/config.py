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

__all__ = ["defaults", "load_rl_config", "prepare_captioner", "loop_config", "meanings"]

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


def meanings() -> dict[str, str]:
    """The one-line meaning of every config key (``--help``): the recipes' and the loop's dataclass docs, and these."""
    from tasks.common.cli import COMMON_MEANINGS, clip_meanings
    from tasks.common.config import dataclass_meanings

    from .decoding import DecodingConfig

    recipes = {}
    for name in load_recipes():   # each recipe documents its own section
        cls = get_recipe(name)
        for sub, doc in cls.option_docs.items():
            recipes.update(dataclass_meanings(doc, f"{cls.section}.{sub}" if sub else cls.section))
    out = {**COMMON_MEANINGS, **recipes, **dataclass_meanings(LoopConfig, "optim"),
           **{f"*.decoding*.{k.split('.', 1)[1]}": v for k, v in dataclass_meanings(DecodingConfig, "d").items()},
           "*.decoding*.preset": "a named decoding preset (tasks/caption_rl/decoding.py); null fields take its values",
           **clip_meanings("vlrm.phi", "VLRM-RS's Phi CLIP"), **clip_meanings("eval", "the evaluation CLIP")}
    return out | {
        "recipe": "gt_contrastive (ground-truth-guided contrastive) | vlrm (A2C) | vlrm_retrieval (VLRM-RS)",
        "captioner.checkpoint": "the supervised captioner to start from (tasks.captioning.train, or official)",
        "captioner.lm": "the local OPT folder",
        "captioner.lm_dtype": "LM weights: float32 (default) | auto (float16 on CUDA, float32 on CPU) | float16 | "
                              "bfloat16",
        "captioner.max_new_tokens": "caption length limit", "captioner.stop_token": "the caption's end token",
        "captioner.train_lm": "train the whole LM too (the official OFA fine-tuning), not only the mapper",
        "captioner.lora.*": "peft LoRA adapters on a frozen LM: enabled, target modules, rank r, alpha, on the "
                            "policy and / or the value head",
        "model.*": "the prefix CLIP (the captioner's image encoder): arch, pretrained, config_file",
        "data.annotations": "training annotations (Karpathy / LAVIS COCO)", "data.images_root": "training images",
        "data.split": "Karpathy split", "data.limit": "use the first N training images only",
        "data.feature_dir": "feature cache folder (shared with the supervised run)",
        "data.neighbours": "hard-negative neighbours mined per image (gt_contrastive)",
        "data.neighbour_keys": "what neighbours are mined on: caption | image",
        "data.rows": "caption (one row per ground-truth caption) | image", "data.caption_choice": "first | random",
        "eval.enabled": "evaluate on the test split (during and after training)",
        "eval.preset": "default | vlrm | chaffin: the evaluation CLIP, decoding and Self-BLEU of that paper",
        "eval.tag": "the evaluation CLIP's open_clip pretrained tag", "eval.self_bleu_n": "Self-BLEU order",
        "eval.strip_periods": "drop final periods before the metrics", "eval.annotations": "test annotations",
        "eval.images_root": "test images", "eval.split": "test split", "eval.limit": "first N test images only",
        "eval.coco": "COCO caption metrics (needs pycocoevalcap: pip install -e \".[caption]\")",
        "eval.meteor": "METEOR: null = when Java is there", "eval.tokenizer": "auto | ptb | simple",
        "gt.disc_checkpoint": "start the discriminator from this file (else pre-train it: gt.disc_pretrain)",
        "gt.disc_pretrain.out": "where the pre-trained discriminator goes (null: <run.out_dir>/discriminator-pretrained.pt)",
        "vlrm.penalties.*": "VLRM's penalties: bad phrases, repeats, years; a phrase file, extra and dropped phrases",
        "vlrm.itm.path": "the BLIP-2 ITM folder (vlrm.sim=itm)",
        "vlrm.itm.dtype": "ITM weights: float32 | auto (float16 on CUDA, float32 on CPU) | float16 | bfloat16",
        "vlrm.itm.batch_size": "ITM pairs scored at once", "vlrm.itm.max_length": "ITM text length limit",
        "vlrm.phi.tag": "the Phi CLIP's open_clip pretrained tag",
        "run.threads": "torch CPU threads (null: torch's default)",
    }
