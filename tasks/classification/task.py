"""Zero-shot classification with test-time adaptation, as a runner task.

``ClassificationTask.from_config(cfg)`` loads the policy CLIP, the reward CLIP(s), the dataset and
the views, and builds the method from the registry; the runner calls ``load`` (views, in workers)
and ``process`` (adapt + predict) per sample.
"""
from __future__ import annotations

import logging
from dataclasses import fields
from typing import Any

import torch

import rlcf
from rlcf.config import AdaptConfig

from rlcf.reward import input_resolution

from ..common.clip import build_clip, resolve_device
from ..common.data import UserError
from ..common.clip import build_reward as build_reward_models
from .datasets import build_dataset, canonical_id, resolve_templates
from .datasets.fewshot import BUILDERS as FINE_GRAINED
from .metrics import classification_metrics
from .policies import EncoderPolicy, PromptPolicy, PrototypePolicy, class_prompts, context_of_template
from .views import ViewTransform

logger = logging.getLogger(__name__)

__all__ = ["DEFAULTS", "ClassificationTask", "build_clip", "build_policy", "build_reward", "resolve_device",
           "class_template", "build_views", "meanings"]

DEFAULTS: dict[str, Any] = {
    "method": "rlcf",
    "policy": "prompt",                       # prompt | encoder | prototype
    "model": {"arch": "ViT-B-16", "pretrained": "${PRETRAINED:-pretrained}/clip/ViT-B-16.pt", "config_file": None},
    "reward": {"arch": "ViT-L-14", "pretrained": "${PRETRAINED:-pretrained}/clip/ViT-L-14.pt", "config_file": None,
               "weight": 2.5, "ensemble": None},   # ensemble: list of {arch, pretrained, config_file, confidence}
    # set_id: a benchmark id (A, V, R, I, K, C/..., Caltech101, ...), world/<split>, or your own data: folder
    # (root = <folder>/<class>/*.jpg) or list (file = a CSV / JSONL of path,label); classnames: openai (CLIP's
    # curated ImageNet names; the folder names for `folder`), json, wordnet, or a names file / JSON map.
    # templates: a name (single | coop | openai | simple), a template with "{}", or a class descriptions JSON
    # ({"class": ["sentence", ...]}: CuPL, GPT descriptors); descriptions: such JSON file(s) added to whatever
    # templates the set uses (per_set templates of the paper configs included)
    "data": {"set_id": "A", "root": "${DATA_ROOT:-data}", "classnames": "openai", "templates": "single", "strict": True,
             "exclude": None,    # exclude: drop images whose file name contains this substring (TDA's quirk)
             "file": None, "descriptions": None},
    # augmix None = the official rule (fine-grained sets only); augmix_ops official (TPT's op set) | torchvision
    "views": {"n": 64, "augmix": None, "augmix_ops": "official", "resolution": None, "flip": True,
              "scale": [0.08, 1.0]},
    # class_template: the class prompt of the encoder policy and of the reward ("{}" = class name); null =
    # "<ctx_init> {}." with underscores as spaces. Official encoder tuning: "a_photo_of_a {}." (underscores kept).
    "prompt": {"n_ctx": 4, "ctx_init": "a photo of a", "coop": None, "text_chunk": None, "class_template": None},
    "encoder": {"norm_only": False, "ensemble": False},   # ensemble: average the dataset's templates
    # the prototype policy (TPS): frozen towers, a learnable shift of cached class prototypes; pooling (with
    # descriptions): texts (mean of every text) | groups (mean of the templates' mean and the descriptions' mean)
    "prototype": {"ensemble": True, "pooling": "texts"},
    "adapt": {f.name: f.default for f in fields(AdaptConfig) if f.name != "options"} | {"options": {}},
    "run": {"out_dir": "output/classification", "workers": 2, "limit": None, "shuffle_seed": None, "seed": 0,
            "device": "auto", "save_logits": False, "allow_online_sharding": False, "shuffle": "python",
            "batch": None,    # batch: samples adapted at once (null = 1, an int, or auto); records are the same
            "restart": False, "keep_errors": False, "allow_errors": False},
    # per_set: {fnmatch pattern over set ids: config deltas}, applied in order to each set of data.set_id
    # (per-dataset values of TDA, C-TPT, ...). See tasks.common.config.for_set.
    "per_set": {},
}


def meanings() -> dict[str, str]:
    """The one-line meaning of every config key (``--help``)."""
    from ..common.cli import COMMON_MEANINGS
    from ..common.config import dataclass_meanings

    return {**COMMON_MEANINGS, **dataclass_meanings(AdaptConfig, "adapt"),
            "policy": "what adapts: prompt (the prompt context, CoOp-style) | encoder (the image encoder) | prototype "
                      "(a per-class shift of cached class prototypes, TPS)",
            "data.set_id": "A, V, R, I, K, C/<corruption>/<level>, a fine-grained set (Caltech101, DTD, ...), "
                           "world/<split>, folder (data.root/<class>/*.jpg) or list (data.file); A/V/R: several",
            "data.root": "the datasets' root folder ($DATA_ROOT), or the image folder of set_id=folder",
            "data.classnames": "openai (CLIP's curated names; folder names for folder) | json | wordnet | a names file",
            "data.templates": "prompt templates of the zero-shot text: single | coop | openai | simple | a list | a "
                              "class descriptions JSON (class -> sentences: CuPL, GPT descriptors)",
            "data.descriptions": "class descriptions JSON file(s) (class -> sentences) added to the set's templates "
                                 "(with encoder.ensemble=true or policy=prototype)",
            "data.strict": "every listed image must exist (false: missing ones are dropped with a warning)",
            "data.exclude": "drop images whose file name contains this text (official TDA drops \"sh\")",
            "data.file": "set_id=list: a CSV / JSONL of path,label rows",
            "views.n": "augmented views per image (view 0 is the clean one)",
            "views.augmix": "AugMix views: null = the official rule (fine-grained sets only), true, false",
            "views.augmix_ops": "official (TPT's AugMix op set) | torchvision",
            "views.resolution": "view size (null: the policy CLIP's input size)",
            "views.flip": "random horizontal flips of the views",
            "views.scale": "RandomResizedCrop area range of the views",
            "prompt.n_ctx": "learnable context tokens of the prompt policy",
            "prompt.ctx_init": "the words the context starts from",
            "prompt.coop": "a CoOp prompt checkpoint to start from (null: ctx_init)",
            "prompt.text_chunk": "classes per text-tower chunk (null: all at once; less memory with many classes)",
            "prompt.class_template": "the class prompt of the encoder policy and the reward ({} = class name); null: "
                                     "\"<ctx_init> {}.\"",
            "encoder.norm_only": "encoder policy: tune the LayerNorm / BatchNorm parameters only",
            "encoder.ensemble": "encoder policy: average the dataset's templates for the classifier",
            "prototype.ensemble": "prototype policy: the prototypes average the dataset's templates (false: one)",
            "prototype.pooling": "with class descriptions: texts (mean of every text) | groups (mean of the templates' "
                                 "and the descriptions' means: TPS's micro)",
            "per_set": "{set-id pattern: config deltas} applied to each set of data.set_id (per-dataset values)"}


def build_policy(kind: str, clip, classnames, tokenizer, cfg: dict, templates=None):
    if kind == "prompt":
        p = cfg["prompt"]
        if p.get("class_template"):
            try:
                context_of_template(p["class_template"])
            except ValueError as e:
                raise UserError(f"prompt.class_template: {e} (policy=prompt tunes the words before the class "
                                "name)") from None
        # an explicit prompt.class_template is the one template of the run: the context starts from its words
        # (PromptPolicy(template=)), as the reward's class texts and the zero-shot baseline read it
        policy = PromptPolicy(clip, classnames, tokenizer, n_ctx=p["n_ctx"], ctx_init=p["ctx_init"],
                              text_chunk=p["text_chunk"], template=p.get("class_template") or None)
        if p["coop"]:
            policy.load_coop(p["coop"])
        return policy
    if kind == "encoder":
        return EncoderPolicy(clip, classnames, tokenizer, template=class_template(cfg),
                             norm_only=cfg["encoder"]["norm_only"],
                             templates=templates if cfg["encoder"]["ensemble"] else None)
    if kind == "prototype":
        p = cfg["prototype"]
        return PrototypePolicy(clip, classnames, tokenizer, template=class_template(cfg),
                               templates=templates if p["ensemble"] else None, pooling=p["pooling"])
    raise ValueError(f"policy must be 'prompt', 'encoder' or 'prototype', got '{kind}'")


def class_template(cfg: dict) -> str:
    """The one class prompt of a run: the encoder policy's text classifier and the reward's class texts.

    ``prompt.class_template`` when set; else ``"<ctx_init> {}."`` with underscores as spaces (what the
    official prompt tuning gives the reward: ``"a photo of a {}."``). Official *encoder* tuning
    (``tune_cls_rl.py``, ``CLIPCLS_TTA``) keeps ``ctx_init = "a_photo_of_a"`` raw, so its prompts read
    ``"a_photo_of_a goldfish."`` (tokens ``a _ photo _ of _ a goldfish .``) for the policy and the reward:
    the encoder paper configs set ``class_template: "a_photo_of_a {}."``. Class names always have their
    underscores replaced (official ``reset_classnames``).
    """
    t = cfg["prompt"].get("class_template")
    if t:
        if "{}" not in t:
            raise ValueError(f"prompt.class_template must contain '{{}}' for the class name, got {t!r}")
        return t
    return (cfg["prompt"]["ctx_init"] or "a photo of a").replace("_", " ") + " {}."


def build_reward(cfg: dict, classnames, device: torch.device, policy_clip=None):
    """The reward (or RLCF-S ensemble) with the class prompts cached once per dataset; ``policy_clip``: the
    model whose normalisation the views carry (mapped to the reward's own when they differ)."""
    reward = build_reward_models(cfg["reward"], device, policy_clip)
    reward.set_candidates(class_prompts(classnames, class_template(cfg)))
    return reward


def build_dataset_from_config(cfg: dict):
    """The test set of ``cfg["data"]`` from the one dataset registry (``tasks.classification.datasets``)."""
    d = cfg["data"]
    extra = {"file": d["file"]} if d.get("file") else {}
    ds = build_dataset(d["set_id"], d["root"], classnames_source=d["classnames"], templates=d["templates"],
                       strict=d["strict"], **extra)
    if d.get("exclude"):   # TDA's listdir drops every file whose name contains "sh" (plushie_*, shark, ...)
        before = len(ds.items)
        ds.items = [it for it in ds.items if d["exclude"] not in it[0].rsplit("/", 1)[-1]]
        logger.info("%s: excluded %d of %d images whose name contains %r", d["set_id"], before - len(ds.items),
                    before, d["exclude"])
    if d.get("descriptions"):   # class descriptions on top of the set's templates
        files = [str(f) for f in (d["descriptions"] if isinstance(d["descriptions"], list) else [d["descriptions"]])]
        bad = [f for f in files if not f.lower().endswith(".json")]
        if bad:
            raise UserError(f"data.descriptions: {bad[0]!r} is not a .json file of class descriptions "
                            '({"class name": ["sentence", ...]})')
        extra = resolve_templates(files)
        for desc in extra:
            desc.check(ds.classnames)
        ds.templates = list(ds.templates) + extra
    return ds


def build_views(cfg: dict, clip) -> ViewTransform:
    """The test-time views of ``cfg["views"]`` at the policy's input size and normalisation."""
    v = cfg["views"]
    augmix = v["augmix"]
    if augmix is None:   # official (TPT's len(set_id) > 1): AugMix only for the fine-grained sets
        augmix = canonical_id(cfg["data"]["set_id"])[0] in FINE_GRAINED
    return ViewTransform(n_views=v["n"], resolution=v["resolution"] or input_resolution(clip),
                         mean=clip.visual.image_mean, std=clip.visual.image_std,
                         augmix=v["augmix_ops"] if augmix else False, scale=tuple(v["scale"]), flip=v["flip"])


class ClassificationTask:
    """Runner task: per sample, views -> ``method(views)`` -> logits of the clean view."""

    def __init__(self, method: rlcf.Method, dataset, views: ViewTransform, seed: int = 0,
                 save_logits: bool = False) -> None:
        self.method, self.dataset, self.views = method, dataset, views
        self.seed, self.save_logits = seed, save_logits
        self.online = method.online
        from ..common.precision import component_precisions, reward_module

        #: what the policy and the reward compute in (record field ``precisions``)
        self.precisions = component_precisions(method.precision, policy=method.policy,
                                               reward=reward_module(method.reward))

    def strata(self) -> list[int]:
        """The class of every sample: ``run.limit`` takes a class-stratified subset."""
        return [int(y) for _, y in self.dataset.items]

    @classmethod
    def from_config(cls, cfg: dict) -> "ClassificationTask":
        device = resolve_device(cfg["run"]["device"])
        torch.manual_seed(cfg["run"]["seed"])   # random-weight models and sampling are reproducible
        dataset = build_dataset_from_config(cfg)
        clip, _, tok = build_clip(cfg["model"], device)
        mcls = rlcf.get_method(cfg["method"])
        reward = build_reward(cfg, dataset.classnames, device, clip) if mcls.needs_reward else None
        policy = build_policy(cfg["policy"], clip, dataset.classnames, tok, cfg, dataset.templates).to(device)
        adapt = dict(cfg["adapt"])
        method = rlcf.create_method(cfg["method"], policy, reward, AdaptConfig(**adapt))
        return cls(method, dataset, build_views(cfg, clip), seed=cfg["run"]["seed"],
                   save_logits=cfg["run"]["save_logits"])

    def __len__(self) -> int:
        return len(self.dataset)

    def sample_id(self, i: int) -> str:
        return self.dataset.sample_id(i)

    def load(self, i: int) -> tuple[torch.Tensor, int]:
        """Views ``[V, 3, R, R]`` (seeded by the sample index) and the label."""
        img = self.dataset.load(i)
        return self.views(img, seed=self.seed * 1_000_003 + i), int(self.dataset.items[i][1])

    def process(self, i: int, sample: tuple[torch.Tensor, int]) -> dict:
        views, label = sample
        with torch.no_grad():
            logits = self.method(views)
        return self._record(label, logits, self.method.last_info)

    def process_batch(self, indices: list[int], samples: list[tuple[torch.Tensor, int]]) -> list[dict]:
        """B samples adapted at once (``run.batch``), each with its own parameters: the same records."""
        with torch.no_grad():
            preds = self.method.forward_batch([views for views, _ in samples])
        return [self._record(label, logits, info)
                for (_, label), logits, info in zip(samples, preds, self.method.last_infos)]

    def _record(self, label: int, logits: torch.Tensor, info: dict) -> dict:
        probs = logits.float().softmax(-1)
        top5 = torch.topk(logits, min(5, logits.shape[-1])).indices.tolist()
        rec = {"label": label, "pred": top5[0], "top5": top5, "confidence": float(probs.max()),
               "flags": info.get("flags", []), "losses": info.get("losses", []), "precision": self.method.precision,
               "precisions": self.precisions}
        if 0 <= label < probs.shape[-1]:
            rec["label_prob"] = float(probs[label])   # the prediction's probability of the true class
        if "mean_reward" in info:
            rec["mean_reward"] = info["mean_reward"]
        rec.update(info.get("record", {}))   # a method's own per-sample fields (e.g. DMN's searched-weight votes)
        if self.save_logits:
            rec["logits"] = [round(x, 5) for x in logits.tolist()]
        return rec

    def summarize(self, records: list[dict]) -> dict:
        metrics = classification_metrics(records, len(self.dataset.classnames))
        extra = getattr(self.method, "summarize_records", None)   # a method's own run-level step (DMN's search)
        return extra(records, metrics) if extra is not None else metrics
