"""Evaluation presets of the two papers, and loading an evaluation CLIP named by open_clip name + tag.

``eval.preset`` in a config picks one; any ``eval.*`` key set to a value overrides the preset's (``null`` keeps it):

* ``vlrm`` (VLRM Table 3, "CLIP Recall"): OpenCLIP **ViT-g-14** ``laion2b_s12b_b42k`` (as IC3), loaded from a local
  file; one caption per Karpathy test image by beam 5, no repeated 2-grams, 4-60 new tokens (Table 2); images
  centre-cropped (open_clip's eval transform); text-to-image MRR and R@1/5/10 (R@1 0.905 for VLRM);
* ``chaffin`` (WTF-RL ``compute_metrics``): the reward CLIP **ViT-B/32**; beam 5, no repeated 3-grams, max 50;
  periods removed before CLIP; R@1/5/10 in both directions and MRR; Self-BLEU-5 over the first 1000 captions;
* ``default``: ViT-B/32, beam 5, the captioner's length limits.

Every preset also reports both retrieval directions, Self-BLEU-4, vocabulary and length (cheap, comparable).
"""
from __future__ import annotations

import copy
import logging
from pathlib import Path
from typing import Any, Callable

from torch import nn

from tasks.common.config import expand_env

logger = logging.getLogger(__name__)

__all__ = ["EVAL_PRESETS", "EVAL_SECTION", "resolve_eval", "load_named_clip"]

_P = "${PRETRAINED:-pretrained}"

#: ``eval`` keys a preset fills (``None`` in the config section = the preset's value).
EVAL_PRESETS: dict[str, dict[str, Any]] = {
    "default": {"arch": "ViT-B-32", "tag": None, "pretrained": f"{_P}/clip/ViT-B-32.pt", "config_file": None,
                "decoding": {"preset": "captioner"}, "self_bleu_n": None, "strip_periods": False},
    "vlrm": {"arch": "ViT-g-14", "tag": "laion2b_s12b_b42k", "pretrained": f"{_P}/clip/ViT-g-14-laion2b_s12b_b42k.bin",
             "config_file": None, "decoding": {"preset": "vlrm_eval"}, "self_bleu_n": None, "strip_periods": False},
    "chaffin": {"arch": "ViT-B-32", "tag": "openai", "pretrained": f"{_P}/clip/ViT-B-32.pt", "config_file": None,
                "decoding": {"preset": "chaffin_eval"}, "self_bleu_n": 5, "strip_periods": True},
}

#: The preset-filled part of the ``eval`` config section (all ``null``: take the preset's).
EVAL_SECTION: dict[str, Any] = {"preset": "default", "arch": None, "tag": None, "pretrained": None,
                                "config_file": None, "decoding": None, "self_bleu_n": None, "strip_periods": None}


def resolve_eval(section: dict[str, Any]) -> dict[str, Any]:
    """The ``eval`` section with its preset's values under every ``null`` key (environment variables expanded).

    ``decoding`` merges field by field: ``{preset: chaffin, decoding: {num_beams: 3}}`` keeps the other fields
    of ``chaffin_eval``.
    """
    name = section.get("preset") or "default"
    if name not in EVAL_PRESETS:
        raise KeyError(f"eval.preset '{name}' unknown; choose from {sorted(EVAL_PRESETS)}")
    preset = copy.deepcopy(EVAL_PRESETS[name])
    out = {**section, "preset": name}
    for k, v in preset.items():
        if k == "decoding":
            mine = section.get("decoding") or {}
            out[k] = {**v, **{kk: vv for kk, vv in mine.items() if vv is not None}} if isinstance(mine, dict) else mine
        elif section.get(k) is None:
            out[k] = v
    if section.get("arch") is not None and section.get("arch") != preset["arch"]:
        for k in ("tag", "pretrained", "config_file"):   # another model: the preset's file and tag do not apply
            if section.get(k) is None:
                out[k] = None
    return expand_env(out)


def load_named_clip(arch: str, tag: str | None, pretrained: str | None, device: Any = "cpu",
                    config_file: str | None = None) -> tuple[nn.Module, Callable, Callable]:
    """An open_clip model named by ``arch`` + ``tag`` whose weights come from the local file ``pretrained``.

    The tag is checked against open_clip's list for ``arch`` and sets the preprocessing (mean, std, interpolation,
    resize mode of that release); weights are never downloaded (``pretrained`` must be a file, or ``None`` for
    random weights in tests). ``world:<name>`` loads the embedded world's models.

    Raises:
        KeyError: a tag open_clip does not know for ``arch``; MissingDataError: the file is missing (with the
            Hugging Face repository to download it from).
    """
    import open_clip

    from tasks.common.clip import build_clip, canonical_arch, load_clip
    from tasks.common.data import MissingDataError

    if arch.startswith("world:"):
        return build_clip({"arch": arch}, device)
    name = canonical_arch(arch)
    cfg = None
    if tag is not None:
        tags = open_clip.list_pretrained_tags_by_model(name)
        if tag not in tags:
            raise KeyError(f"eval.tag '{tag}' is not an open_clip release of '{name}'; known: {tags}")
        cfg = open_clip.get_pretrained_cfg(name, tag)
    if pretrained is not None and not Path(pretrained).expanduser().is_file():
        hub = (cfg or {}).get("hf_hub") or (cfg or {}).get("url") or "the release page"
        raise MissingDataError(f"evaluation CLIP weights '{pretrained}' not found for {name} ({tag}). Download them "
                               f"once elsewhere (from {hub}), put the file there and set eval.pretrained.")
    model, preprocess, tokenizer = load_clip(name, pretrained, device=device, config_file=config_file)
    if cfg:
        size = model.visual.image_size
        preprocess = open_clip.image_transform(size, is_train=False, mean=cfg.get("mean"), std=cfg.get("std"),
                                               interpolation=cfg.get("interpolation"),
                                               resize_mode=cfg.get("resize_mode"))
    logger.info("evaluation CLIP %s (%s) from %s", name, tag, pretrained)
    return model, preprocess, tokenizer
