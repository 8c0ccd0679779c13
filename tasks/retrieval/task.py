"""Image-text retrieval with test-time adaptation, as a runner task (one query = one sample).

``RetrievalTask.from_config(cfg)`` loads the policy CLIP, the reward CLIP(s) and the test set,
computes the gallery features ONCE (policy and reward models), and builds the method; per query
the runner calls ``load`` (the image ``[3, H, W]`` or the caption's token ids ``[1, L]``) and
``process`` (adapt on that query, score the whole gallery, keep the rank of the ground truth).

Official settings (``retrieval/scripts/tta_{coco,flickr}_ret.sh``): 8 steps, AdamW lr 1e-6,
eps 1e-6, weight decay 5e-4, K = 20 (COCO i2t) / 16 (Flickr i2t) / 12 (t2i) top gallery items,
CLIPScore reward from ViT-L/14 with the mean-of-K baseline, reset after every query.
"""
from __future__ import annotations

import logging
from dataclasses import fields
from typing import Any

import torch
from torch.utils.data import DataLoader, Dataset

import rlcf
from rlcf.config import AdaptConfig



from ..common.clip import build_clip, resolve_device
from ..common.clip import build_reward as build_reward_models
from ..common.data import loader_workers
from .data import RetrievalData, build_retrieval_data
from .metrics import best_rank, direction_metrics, ranked
from .policies import ImageToTextPolicy, TextToImagePolicy, encode_image_gallery, encode_text_gallery, reward_members

logger = logging.getLogger(__name__)

__all__ = ["DEFAULTS", "DIRECTIONS", "RetrievalTask", "build_clip", "build_reward", "resolve_device",
           "resolve_adapt", "meanings"]

DIRECTIONS = ("i2t", "t2i")

DEFAULTS: dict[str, Any] = {
    "method": "rlcf",
    "direction": "t2i",                       # t2i | i2t | t2i/i2t (one output folder each)
    "model": {"arch": "ViT-B-16", "pretrained": "${PRETRAINED:-pretrained}/clip/ViT-B-16.pt", "config_file": None},
    "reward": {"arch": "ViT-L-14", "pretrained": "${PRETRAINED:-pretrained}/clip/ViT-L-14.pt", "config_file": None,
               "weight": 2.5, "ensemble": None},   # ensemble: list of {arch, pretrained, config_file, confidence}
    "data": {"dataset": "coco", "root": "${DATA_ROOT:-data}", "annotations": None, "images": None, "max_words": 50,
             "max_images": None},
    "retrieval": {"k_i2t": 20, "k_t2i": 12, "train_logit_scale": True, "truncate": True, "gallery_batch": 256,
                  "top": 10},
    "adapt": {f.name: f.default for f in fields(AdaptConfig) if f.name != "options"}
    | {"steps": 8, "lr": 1e-6, "eps": 1e-6, "weight_decay": 5e-4, "selection": 1.0, "k": None, "options": {}},
    "run": {"out_dir": "output/retrieval", "workers": 2, "limit": None, "shuffle_seed": None, "seed": 0,
            "device": "auto", "allow_online_sharding": False, "batch": None, "restart": False, "keep_errors": False,
            "allow_errors": False},
}


def meanings() -> dict[str, str]:
    """The one-line meaning of every config key (``--help``)."""
    from ..common.cli import COMMON_MEANINGS
    from ..common.config import dataclass_meanings

    return {**COMMON_MEANINGS, **dataclass_meanings(AdaptConfig, "adapt"),
            "adapt.k": "candidates per query (null: retrieval.k_i2t / k_t2i, at most the gallery size)",
            "direction": "t2i (text queries, image gallery) | i2t | t2i/i2t (both, one folder each)",
            "data.dataset": "coco | flickr | world | list (your own: data.annotations = path,caption[,caption...])",
            "data.root": "the datasets' root folder ($DATA_ROOT)",
            "data.annotations": "the annotation file (null: the dataset's default under data.root)",
            "data.images": "the images folder (null: the dataset's default under data.root)",
            "data.max_words": "captions cut to this many words (official 50)",
            "data.max_images": "use only the first N gallery images (a quick look)",
            "retrieval.k_i2t": "candidate captions per image query (official COCO 20, Flickr 16)",
            "retrieval.k_t2i": "candidate images per caption query (official 12)",
            "retrieval.train_logit_scale": "t2i: tune CLIP's logit_scale too (official: yes)",
            "retrieval.truncate": "run the text tower only up to each caption's end token",
            "retrieval.gallery_batch": "gallery items encoded at once",
            "retrieval.top": "ranked gallery ids kept in each record"}


def build_reward(cfg: dict, device: torch.device, policy_clip=None):
    """:class:`rlcf.CLIPReward`, or :class:`rlcf.EnsembleReward` (RLCF-S) when ``reward.ensemble`` is set.
    No candidate is cached here (see :meth:`RetrievalTask.from_config`). ``policy_clip``: the model whose
    preprocessing the query / gallery images carry."""
    return build_reward_models(cfg["reward"], device, policy_clip)


def resolve_adapt(cfg: dict, direction: str, gallery_size: int, device: torch.device) -> AdaptConfig:
    """The method's :class:`AdaptConfig`: ``adapt.k`` null -> ``retrieval.k_<direction>`` (capped at
    the gallery size), ``zeroshot`` -> 0 steps."""
    adapt = dict(cfg["adapt"])
    if rlcf.get_method(cfg["method"]).default_config.steps == 0:
        adapt["steps"] = 0
    k = adapt["k"] if adapt["k"] is not None else cfg["retrieval"][f"k_{direction}"]
    if k > gallery_size:
        logger.warning("k=%d is larger than the gallery (%d items): using k=%d", k, gallery_size, gallery_size)
        k = gallery_size
    adapt["k"] = int(k)
    return AdaptConfig(**adapt)


class _GalleryImages(Dataset):
    def __init__(self, data: RetrievalData, preprocess) -> None:
        self.data, self.preprocess = data, preprocess

    def __len__(self) -> int:
        return self.data.n_images

    def __getitem__(self, i: int) -> torch.Tensor:
        return self.preprocess(self.data.load_image(i))


class RetrievalTask:
    """Runner task of one direction: per query, ``method(query)`` -> gallery scores -> rank of the truth.

    Args:
        method: the adaptation method around an :class:`ImageToTextPolicy` or :class:`TextToImagePolicy`.
        data: the test set.
        direction: ``i2t`` (queries = images) or ``t2i`` (queries = captions).
        preprocess: PIL image -> ``[3, H, W]`` (i2t queries; t2i queries are the caption strings).
        top: gallery indices stored per query (rank order).
    """

    def __init__(self, method: rlcf.Method, data: RetrievalData, direction: str, preprocess=None,
                 top: int = 10) -> None:
        if direction not in DIRECTIONS:
            raise ValueError(f"direction must be one of {DIRECTIONS}, got '{direction}'")
        self.method, self.data, self.direction = method, data, direction
        self.preprocess, self.top = preprocess, top
        self.online = method.online
        from ..common.precision import component_precisions, reward_module

        #: what the policy and the reward compute in (record field ``precisions``)
        self.precisions = component_precisions(method.precision, policy=method.policy,
                                               reward=reward_module(method.reward))

    @classmethod
    def from_config(cls, cfg: dict, data: RetrievalData | None = None) -> RetrievalTask:
        """Build everything for ``cfg["direction"]`` (a single direction); gallery features are
        computed here, once, by the policy and by every reward model."""
        direction = cfg["direction"]
        if direction not in DIRECTIONS:
            raise ValueError(f"direction must be one of {DIRECTIONS}, got '{direction}'")
        device = resolve_device(cfg["run"]["device"])
        torch.manual_seed(cfg["run"]["seed"])   # random-weight models are reproducible
        data = data if data is not None else build_retrieval_data(cfg["data"])
        clip, preprocess, tok = build_clip(cfg["model"], device)
        r = cfg["retrieval"]
        mcls = rlcf.get_method(cfg["method"])
        reward = build_reward(cfg, device, clip) if mcls.needs_reward else None
        if direction == "i2t":
            policy = ImageToTextPolicy(clip, encode_text_gallery(clip, tok, data.texts, r["gallery_batch"]))
            if reward is not None:
                reward.set_candidates(data.texts)         # each reward CLIP with its own tokenizer
            gallery_size = data.n_texts
        else:
            members = reward_members(reward) if reward is not None else []
            loader = DataLoader(_GalleryImages(data, preprocess), batch_size=r["gallery_batch"], shuffle=False,
                                num_workers=loader_workers(cfg["run"]["workers"]))
            encoders = [lambda x: clip.encode_image(x.to(device))] + [m.encode_images for m in members]
            with torch.no_grad():
                feats = encode_image_gallery(loader, encoders)
            for m, f in zip(members, feats[1:], strict=True):
                m.set_candidate_features(f)
            policy = TextToImagePolicy(clip, feats[0], tok, train_logit_scale=r["train_logit_scale"],
                                       truncate=r["truncate"])
            gallery_size = data.n_images
        policy = policy.to(device)
        method = rlcf.create_method(cfg["method"], policy, reward, resolve_adapt(cfg, direction, gallery_size, device))
        n_train = sum(p.numel() for p in policy.parameters() if p.requires_grad)
        logger.info("%s %s on %s: %d queries, gallery %d, %d trainable parameters, k=%d", cfg["method"], direction,
                    data.name, data.n_images if direction == "i2t" else data.n_texts, gallery_size, n_train,
                    method.config.k)
        return cls(method, data, direction, preprocess, r["top"])

    # ------------------------------------------------------------------------ runner contract
    def __len__(self) -> int:
        return self.data.n_images if self.direction == "i2t" else self.data.n_texts

    def sample_id(self, i: int) -> str:
        return self.data.image_ids[i] if self.direction == "i2t" else self.data.text_id(i)

    def load(self, i: int) -> torch.Tensor | str:
        """i2t: the image ``[3, H, W]``; t2i: the caption (the policy and the reward tokenise it)."""
        if self.direction == "i2t":
            return self.preprocess(self.data.load_image(i))
        return self.data.texts[i]

    def ground_truth(self, i: int) -> list[int]:
        return list(self.data.img2txt[i]) if self.direction == "i2t" else [self.data.txt2img[i]]

    def process(self, i: int, sample: torch.Tensor | str) -> dict:
        with torch.no_grad():
            scores = self.method(sample)                     # [N_gallery]
        return self._record(i, scores, self.method.last_info)

    def process_batch(self, indices: list[int], samples: list[torch.Tensor | str]) -> list[dict]:
        """B queries adapted at once (``run.batch``), each with its own parameters: the same records."""
        with torch.no_grad():
            scores = self.method.forward_batch(list(samples))
        return [self._record(i, s, info) for i, s, info in zip(indices, scores, self.method.last_infos)]

    def _record(self, i: int, scores: torch.Tensor, info: dict) -> dict:
        gt = self.ground_truth(i)
        rec = {"rank": best_rank(scores, gt), "gt": gt, "top": ranked(scores, self.top),
               "flags": info.get("flags", []), "losses": info.get("losses", []), "precision": self.method.precision,
               "precisions": self.precisions}
        if "mean_reward" in info:
            rec["mean_reward"] = info["mean_reward"]
        return rec

    def summarize(self, records: list[dict]) -> dict:
        m: dict[str, Any] = direction_metrics([r["rank"] for r in records], self.direction)
        m["queries"] = len(records)
        m["gallery"] = self.data.n_texts if self.direction == "i2t" else self.data.n_images
        m["nan_fallbacks"] = sum(rlcf.Flags.NAN_FALLBACK in r.get("flags", []) for r in records)
        rewards = [r["mean_reward"] for r in records if r.get("mean_reward")]
        if rewards:
            m["reward_first_step"] = sum(x[0] for x in rewards) / len(rewards)
            m["reward_last_step"] = sum(x[-1] for x in rewards) / len(rewards)
        return m
