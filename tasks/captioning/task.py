"""Caption test-time adaptation (RLCF) as a runner task (the command line is :mod:`.run`).

Per image: the policy CLIP embeds it once, K captions by beam search, CLIPScore rewards from the
reward CLIP on the raw captions, mean-of-K baseline, advantage-weighted mean-token log-likelihood
through the mapper, ``adapt.steps`` AdamW steps, a 5-beam final caption, exact reset. Records
(``records-*.jsonl``) hold every step's candidates and rewards; ``summary.json`` / ``summary.md``
the metrics (after TTA and, with ``eval.zero_shot``, before it); ``captions.json`` the official
result format (``[{"image_id", "caption"}]``).
"""
from __future__ import annotations

import json
import logging
from dataclasses import fields
from pathlib import Path
from typing import Any, Callable, Sequence

import torch

import rlcf
from rlcf.config import AdaptConfig

from ..common.clip import build_clip, build_reward, resolve_device
from ..common.data import require_path
from .checkpoint import load_captioner
from .data import CaptionImageDataset, CaptionItem, load_annotations
from .metrics import ClipScorer, clip_scores, coco_metrics, self_bleu, vocab_size
from .policy import CaptionPolicy

logger = logging.getLogger(__name__)

__all__ = ["DEFAULTS", "CaptionTask", "caption_metrics", "write_official_results", "meanings"]

_P = "${PRETRAINED:-pretrained}"
DEFAULTS: dict[str, Any] = {
    "method": "rlcf",
    "captioner": {"checkpoint": "${OUTPUT:-output}/clipcap_opt125m_transformer_coco_01/ckpt-latest.pt",
                  # lm_dtype: auto = adapt.amp's rule (float16 on CUDA, the official OPT setting; float32 on CPU)
                  "lm": f"{_P}/opt-125m", "lm_dtype": "auto", "candidates": "beam", "final_beams": 5,
                  "max_new_tokens": None, "stop_token": None,   # None: as stored in the checkpoint
                  "token_loss": "clean"},   # official | clean (see CaptionPolicy); the paper configs: official
    "model": {"arch": "ViT-B-16", "pretrained": f"{_P}/clip/ViT-B-16.pt", "config_file": None},
    # ensemble (RLCF-S): list of {arch, pretrained, config_file, confidence} (official 10 / 3 / 5)
    "reward": {"arch": "ViT-L-14", "pretrained": f"{_P}/clip/ViT-L-14.pt", "config_file": None, "weight": 2.5,
               "ensemble": None},
    "eval": {"enabled": True, "arch": "ViT-B-32", "pretrained": f"{_P}/clip/ViT-B-32.pt", "config_file": None,
             "zero_shot": True, "tokenizer": "auto", "meteor": None, "spice": None},   # None: when available
    "data": {"annotations": "${DATA_ROOT:-data}/flickr30k/annotations/flickr30k_test.json",
             "images_root": "${DATA_ROOT:-data}/flickr30k", "split": "test", "domain": None},
    "adapt": {f.name: f.default for f in fields(AdaptConfig) if f.name != "options"} | {"options": {}},
    "run": {"out_dir": "output/captioning/clipcap_c2f", "workers": 2, "limit": None, "shuffle_seed": None,
            "seed": 0, "device": "auto", "batch": None, "restart": False, "keep_errors": False, "allow_errors": False},
}
DEFAULTS["adapt"].update(steps=4, lr=2e-6, weight_decay=0.0, eps=1e-6, k=10, selection=1.0)


def meanings() -> dict[str, str]:
    """The one-line meaning of every config key (``--help``)."""
    from ..common.cli import COMMON_MEANINGS, clip_meanings
    from ..common.config import dataclass_meanings

    return {**COMMON_MEANINGS, **dataclass_meanings(AdaptConfig, "adapt"),
            **clip_meanings("eval", "the CLIP of CLIPScore / RefCLIPScore (ViT-B/32 as Hessel et al.)"),
            "captioner.checkpoint": "the captioner (ckpt-latest.pt of tasks.captioning.train, or an official release)",
            "captioner.lm": "the local OPT folder (facebook/opt-125m as the hub ships it)",
            "captioner.lm_dtype": "LM weights: auto (float16 on CUDA, the official setting; float32 on CPU) | float32 "
                                  "| float16 | bfloat16",
            "captioner.candidates": "beam (official: K beams) | sample (nucleus sampling)",
            "captioner.final_beams": "beams of the final caption (official 5)",
            "captioner.max_new_tokens": "caption length limit (null: as stored in the checkpoint)",
            "captioner.stop_token": "the caption's end token (null: as stored in the checkpoint)",
            "captioner.token_loss": "official (the padded-length loss of the official TTA) | clean (own tokens + STOP)",
            "eval.enabled": "compute CLIPScore / RefCLIPScore with the eval CLIP",
            "eval.zero_shot": "also caption every image without adaptation (the zero-shot column)",
            "eval.tokenizer": "caption metrics' tokenizer: auto (PTB when Java is there) | ptb | simple",
            "eval.meteor": "METEOR: null = when Java is there, true, false",
            "eval.spice": "SPICE: null = when Java and the CoreNLP jars are there, true, false",
            "data.annotations": "annotation file: Karpathy / LAVIS JSON, NoCaps, or your CSV (path[,reference...])",
            "data.images_root": "the images folder (the dataset folder or its images/ folder)",
            "data.split": "Karpathy split to read (test)",
            "data.domain": "NoCaps domain: in-domain | near-domain | out-domain (null: all)"}


def caption_metrics(items: Sequence[CaptionItem], records: Sequence[dict], key: str = "caption",
                    tokenizer: str = "auto", meteor: bool | str = "auto", spice: bool | str = "auto") -> dict:
    """COCO metrics, CLIPScore / RefCLIPScore (means, x100), vocabulary size and Self-BLEU of the
    captions ``rec[key]`` of ``records`` (indexed by ``rec["index"]`` into ``items``)."""
    out: dict[str, Any] = {}
    caps = [r[key] for r in records]
    with_refs = [r for r in records if items[r["index"]].references]
    if with_refs:
        refs = {str(r["index"]): items[r["index"]].references for r in with_refs}
        cands = {str(r["index"]): r[key] for r in with_refs}
        out.update(coco_metrics(refs, cands, tokenizer=tokenizer, meteor=meteor, spice=spice))
    suffix = "" if key == "caption" else key[len("caption"):]
    for name, field in (("CLIPScore", "clip_s"), ("RefCLIPScore", "refclip_s")):
        vals = [r[field + suffix] for r in records if r.get(field + suffix) is not None]
        if vals:
            out[name] = 100.0 * sum(vals) / len(vals)
    out["vocab_size"] = vocab_size(caps)
    out["self_BLEU-4"] = self_bleu(caps)
    out["mean_length"] = sum(len(c.split()) for c in caps) / max(1, len(caps))
    return out


class CaptionTask:
    """Runner task: per image, ``method(image)`` -> caption, with candidates, rewards and scores.

    Args:
        method: the adaptation method around a :class:`CaptionPolicy`.
        items: the images' annotations (references may be empty).
        load_image: ``i -> [3, H, W]`` tensor preprocessed for the policy CLIP (runs in workers).
        scorer: CLIPScore / RefCLIPScore model (``None`` skips them).
        zero_shot: also record the unadapted 5-beam caption (``caption_zeroshot``).
        metric_options: ``tokenizer`` / ``meteor`` / ``spice`` for :func:`coco_metrics`.
    """

    online = False

    def __init__(self, method: rlcf.Method, items: Sequence[CaptionItem], load_image: Callable[[int], torch.Tensor],
                 scorer: ClipScorer | None = None, zero_shot: bool = True,
                 metric_options: dict | None = None) -> None:
        self.method, self.items, self.load_image = method, list(items), load_image
        self.scorer, self.zero_shot = scorer, zero_shot
        self.zeroshot = rlcf.create_method("zeroshot", method.policy, amp=method.config.amp) if zero_shot else None
        self.metric_options = dict(metric_options or {})
        self.online = method.online
        from ..common.precision import component_precisions, reward_module

        policy = method.policy
        #: what each part computes in (record field ``precisions``): the policy (CLIP encoder + mapper), the LM, the
        #: reward; ``precision`` is the adaptation's autocast (``adapt.amp``)
        self.precisions = component_precisions(
            method.precision, policy=torch.nn.ModuleList([policy.clip_model, policy.captioner.mapper]),
            lm=policy.captioner.lm, reward=reward_module(method.reward))

    def __len__(self) -> int:
        return len(self.items)

    def sample_id(self, i: int) -> str:
        return self.items[i].image_id

    def load(self, i: int) -> torch.Tensor:
        return self.load_image(i)

    def process(self, i: int, sample: torch.Tensor) -> dict:
        image = sample.unsqueeze(0) if sample.dim() == 3 else sample
        rec: dict[str, Any] = {"image": self.items[i].image}
        with torch.no_grad():
            if self.zeroshot is not None:   # the unadapted caption, through the same engine
                rec["caption_zeroshot"] = self.zeroshot(image)
            rec["caption"] = self.method(image)
        info = self.method.last_info
        rec["candidates"] = [step[0] for step in info.get("candidates", [])]
        rec["rewards"] = [[round(x, 5) for x in step[0]] for step in info.get("rewards", [])]
        rec["losses"] = info.get("losses", [])
        rec["flags"] = info.get("flags", [])
        rec["precision"] = self.method.precision
        rec["precisions"] = self.precisions
        if self.scorer is not None:   # image and references encoded once for both captions
            refs = self.items[i].references
            keys = ["caption"] + (["caption_zeroshot"] if self.zero_shot else [])
            feats = self.scorer.encode_images(image).expand(len(keys), -1)
            ref_feats = [self.scorer.encode_texts(refs)] * len(keys) if refs else None
            clip_s, ref_s = clip_scores(feats, self.scorer.encode_texts([rec[k] for k in keys]), ref_feats,
                                        self.scorer.weight)
            for j, key in enumerate(keys):
                suffix = key[len("caption"):]
                rec["clip_s" + suffix] = float(clip_s[j])
                rec["refclip_s" + suffix] = float(ref_s[j]) if ref_s is not None else None
        return rec

    def process_batch(self, indices: list[int], samples: list[torch.Tensor]) -> list[dict]:
        """``run.batch`` for captions runs the images one after the other: beam search cannot share a batch without
        changing its numerics, so only the gradient step could be batched (the README's batching section gives
        the measured split of an episode, ``benchmarks/bench_caption.py --profile``)."""
        return [self.process(i, s) for i, s in zip(indices, samples)]

    def summarize(self, records: list[dict]) -> dict:
        m = caption_metrics(self.items, records, "caption", **self.metric_options)
        if self.zero_shot and all("caption_zeroshot" in r for r in records):
            zs = caption_metrics(self.items, records, "caption_zeroshot", **self.metric_options)
            m.update({f"zeroshot/{k}": v for k, v in zs.items() if isinstance(v, (int, float))})
        steps = max((len(r["rewards"]) for r in records), default=0)
        for s in range(steps):
            vals = [sum(r["rewards"][s]) / len(r["rewards"][s]) for r in records if len(r["rewards"]) > s]
            m[f"mean_reward/step{s}"] = sum(vals) / len(vals)
        return m

    # ------------------------------------------------------------------ building
    @classmethod
    def from_config(cls, cfg: dict) -> "CaptionTask":
        device = resolve_device(cfg["run"]["device"])
        torch.manual_seed(cfg["run"]["seed"])
        d, c = cfg["data"], cfg["captioner"]
        ann = require_path(d["annotations"], "caption annotations", "See tasks/captioning/README.md (data layout).")
        items = load_annotations(ann, d["split"], d["domain"])
        dataset = CaptionImageDataset(items, d["images_root"])   # a wrong images root fails here, before any model
        clip, preprocess, _ = build_clip(cfg["model"], device)
        mcls = rlcf.get_method(cfg["method"])
        reward = build_reward(cfg["reward"], device, clip) if mcls.needs_reward else None
        scorer = None
        if cfg["eval"]["enabled"]:
            emodel, _, etok = build_clip(cfg["eval"], device)
            scorer = ClipScorer(emodel, etok)
        from ..common.precision import resolve_dtype

        lm_dtype = resolve_dtype(c["lm_dtype"], device, cfg["adapt"]["amp"], "captioner.lm_dtype")
        captioner = load_captioner(c["checkpoint"], c["lm"], device, lm_dtype)
        captioner.configure(**{k: c[k] for k in ("max_new_tokens", "stop_token") if c[k] is not None})
        policy = CaptionPolicy(captioner, clip, candidates=c["candidates"], final_beams=c["final_beams"],
                               token_loss=c["token_loss"]).to(device)
        adapt = dict(cfg["adapt"])
        method = rlcf.create_method(cfg["method"], policy, reward, AdaptConfig(**adapt))
        dataset.transform = preprocess
        e = cfg["eval"]
        options = {"tokenizer": e["tokenizer"], **{k: "auto" if e[k] is None else e[k] for k in ("meteor", "spice")}}
        return cls(method, items, lambda i: dataset[i][0], scorer, zero_shot=e["zero_shot"], metric_options=options)


def write_official_results(task: CaptionTask, out_dir: str | Path) -> None:
    """``captions.json`` ([{image_id, caption}], as the official TTA) and ``clipscore_candidates.json``
    ({image file stem: caption}, the input of Hessel's clipscore.py)."""
    from ..common.runner import read_records

    recs = [r for _, r in sorted(read_records(out_dir).items()) if "caption" in r]
    out = Path(out_dir)
    out.joinpath("captions.json").write_text(json.dumps([{"image_id": r["id"], "caption": r["caption"]} for r in recs]))
    out.joinpath("clipscore_candidates.json").write_text(
        json.dumps({Path(r["image"]).stem: r["caption"] for r in recs}, indent=0))
