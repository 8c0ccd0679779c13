"""Splits of the embedded world, their on-disk cache, and the dataset class.

Splits mirror the ImageNet family:

==============  ==============================================================================
``train``       clean photos (policy and filter training data)
``train_extra`` more clean photos of the same distribution (the reward model's extra data)
``dev``         clean photos, used for every hyper-parameter choice
``dev_shift``   shifted photos for learning-rate choice: silhouettes, halftone prints, warped photos (round robin),
                shift families that no test split and no training augmentation uses
``val``         clean photos (the ImageNet val analogue)
``v2``          fresh stream, slightly shifted ranges (rotation, size, aspect, colour, shading)
``sketch``      outline-only strokes on paper, no fill colour
``rendition``   textures, pixel art, cartoons, false-colour palettes (round robin)
``adversarial`` clutter / occlusion / small / low contrast / rotated candidates, kept only
                where the separate *filter* model is wrong (as ImageNet-A against ResNet-50)
``corrupt``     clean photos with noise / blur / contrast / JPEG at severities 1-5
==============  ==============================================================================

Cache layout (``root`` defaults to ``data/world``)::

    <root>/<WORLD_VERSION>-<config hash>/world.json
    <root>/<WORLD_VERSION>-<config hash>/<split>/<classname>/<index>.png
    <root>/<WORLD_VERSION>-<config hash>/<split>/captions.json   {relative path: [captions]}
    <root>/<WORLD_VERSION>-<config hash>/<split>/meta.json       [{path, label, ...attributes}]
    <root>/<WORLD_VERSION>-<config hash>/<split>/manifest.json   completion marker + content hash

A split is written to a temporary folder and renamed into place once complete, and a split
folder is only trusted when its manifest exists and the content hash matches; anything else is
deleted and rebuilt.  Any change of the world version or configuration changes the folder.
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import uuid
from dataclasses import asdict, dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import torch
from PIL import Image

from tasks.common.data import ImageListDataset

from .generator import DEV_SHIFT_STYLES, HARDNESS, SceneRanges, make_sample, sample_rng
from .render import CORRUPTIONS
from .shapes import CLASSNAMES

logger = logging.getLogger(__name__)

__all__ = ["WORLD_VERSION", "WorldConfig", "WorldDataset", "SPLITS", "EVAL_SPLITS", "OOD_SPLITS",
           "build_world_dataset", "materialize_split", "load_split_tensors", "world_dir", "TEMPLATES"]

WORLD_VERSION = "v2"
SPLITS = ("train", "train_extra", "dev", "dev_shift", "val", "v2", "sketch", "rendition", "adversarial", "corrupt")
EVAL_SPLITS = ("dev", "dev_shift", "val", "v2", "sketch", "rendition", "adversarial", "corrupt")
OOD_SPLITS = ("v2", "sketch", "rendition", "adversarial")
RENDITION_STYLES = ("texture", "pixel", "cartoon", "palette")
TEMPLATES = ("a photo of a {}.", "a picture of a {}.", "an image of a {}.", "a {}.")
_BALANCED = ("dev", "dev_shift", "val", "v2", "sketch", "rendition", "corrupt")


def _default_sizes() -> dict[str, int]:
    return {"train": 10000, "train_extra": 10000, "dev": 640, "dev_shift": 480, "val": 480, "v2": 240, "sketch": 240,
            "rendition": 240, "adversarial": 240, "corrupt": 240}


@dataclass(frozen=True)
class WorldConfig:
    """Everything that determines the world's bytes (hashed into the cache folder name).

    ``filter_model`` / ``filter_steps`` identify the filter model the adversarial split is
    selected against (trained by :mod:`tasks.world.models` on ``train``).
    """
    seed: int = 0
    image_size: int = 48
    n_captions: int = 5
    sizes: dict[str, int] = field(default_factory=_default_sizes)
    ranges: SceneRanges = SceneRanges()
    v2_ranges: SceneRanges = SceneRanges(rotation_deg=25.0, radius_scale=0.76, aspect_jitter=0.08,
                                         colour_jitter=20.0, count_probs=(0.75, 0.17, 0.08), shading=35.0,
                                         bg_gradient=25.0, noise=4.0)
    adversarial_hardness: int = 1
    adversarial_max_candidates: int = 40  # per kept sample
    filter_model: str = "World-Filter-RN"
    filter_steps: int = 400

    @property
    def classnames(self) -> list[str]:
        return list(CLASSNAMES)

    def size(self, split: str) -> int:
        if split not in self.sizes:
            raise KeyError(f"unknown world split '{split}', expected one of {SPLITS}")
        return int(self.sizes[split])

    def to_dict(self) -> dict:
        d = asdict(self)
        d["version"] = WORLD_VERSION
        d["classnames"] = self.classnames
        return d

    def hash(self) -> str:
        blob = json.dumps(self.to_dict(), sort_keys=True).encode()
        return hashlib.sha256(blob).hexdigest()[:12]


def world_dir(root: str | Path, world: WorldConfig) -> Path:
    """``<root>/<version>-<config hash>``: the folder of this exact world."""
    return Path(root) / f"{WORLD_VERSION}-{world.hash()}"


def _split_kwargs(split: str, i: int, world: WorldConfig) -> dict:
    """``make_sample`` keyword arguments of sample ``i`` of ``split`` (not adversarial)."""
    kw: dict = {"image_size": world.image_size, "ranges": world.ranges, "n_captions": world.n_captions}
    if split in _BALANCED:
        kw["label"] = i % len(CLASSNAMES)
    if split == "v2":
        kw["ranges"] = world.v2_ranges
    elif split == "sketch":
        kw["style"] = "sketch"
    elif split == "rendition":
        kw["style"] = RENDITION_STYLES[i % len(RENDITION_STYLES)]
    elif split == "dev_shift":
        kw["style"] = DEV_SHIFT_STYLES[i % len(DEV_SHIFT_STYLES)]
    elif split == "corrupt":
        kw["corruption"] = (CORRUPTIONS[i % len(CORRUPTIONS)], 1 + (i // len(CORRUPTIONS)) % 5)
    return kw


def adversarial_hardness(world: WorldConfig, i: int) -> tuple[str, ...]:
    """Hardness factors of adversarial candidate ``i`` (deterministic)."""
    r = sample_rng(world.seed, "adversarial-hardness", i)
    return tuple(str(h) for h in r.choice(HARDNESS, world.adversarial_hardness, replace=False))


def _generate(split: str, world: WorldConfig, predict: Callable[[np.ndarray], np.ndarray] | None):
    """Yield ``(index, Sample)`` of ``split``; adversarial candidates are kept where ``predict`` errs."""
    n = world.size(split)
    if split != "adversarial":
        for i in range(n):
            yield i, make_sample(world.seed, split, i, **_split_kwargs(split, i, world))
        return
    if predict is None:
        raise ValueError("the adversarial split needs the filter model's predict function")
    kept, i, chunk = 0, 0, 256
    limit = n * world.adversarial_max_candidates
    while kept < n and i < limit:
        cands = [make_sample(world.seed, split, j, image_size=world.image_size, ranges=world.ranges,
                             hard=adversarial_hardness(world, j), n_captions=world.n_captions)
                 for j in range(i, min(i + chunk, limit))]
        pred = predict(np.stack([c.image for c in cands]))
        for j, (c, p) in enumerate(zip(cands, pred)):
            if int(p) != c.label and kept < n:
                c.meta.update(candidate=i + j, filter_pred=CLASSNAMES[int(p)])
                kept += 1
                yield i + j, c
        i += len(cands)
    if kept < n:
        logger.warning("adversarial split: only %d of %d samples found in %d candidates", kept, n, i)


def _hash_files(folder: Path, rels: Sequence[str]) -> str:
    h = hashlib.sha256()
    for rel in rels:
        h.update(rel.encode())
        h.update((folder / rel).read_bytes())
    return h.hexdigest()


def _valid(folder: Path, world: WorldConfig, extra: dict) -> bool:
    man = folder / "manifest.json"
    if not man.is_file():
        return False
    try:
        m = json.loads(man.read_text())
        meta = json.loads((folder / "meta.json").read_text())
        rels = [r["path"] for r in meta]
        ok = (m.get("complete") is True and m.get("world_hash") == world.hash() and m.get("n") == len(rels)
              and all(m.get(k) == v for k, v in extra.items()) and _hash_files(folder, rels) == m.get("sha256"))
    except (OSError, ValueError, KeyError, TypeError):
        return False
    return bool(ok)


def materialize_split(split: str, root: str | Path = "data/world", world: WorldConfig | None = None,
                      predict: Callable[[np.ndarray], np.ndarray] | None = None, extra: dict | None = None) -> Path:
    """Write ``split`` to the cache (unless a complete, matching copy exists) and return its folder.

    Args:
        predict: filter predictions ``uint8 (B, H, W, 3) -> (B,)`` labels (adversarial only).
        extra: additional manifest entries that must match for the cache to be reused
            (the adversarial split records the filter checkpoint's hash).
    """
    world = world or WorldConfig()
    extra = extra or {}
    base = world_dir(root, world)
    folder = base / split
    if _valid(folder, world, extra):
        return folder
    if folder.exists():
        logger.warning("world split cache %s is incomplete, stale or corrupted: rebuilding", folder)
        shutil.rmtree(folder)
    base.mkdir(parents=True, exist_ok=True)
    (base / "world.json").write_text(json.dumps(world.to_dict(), indent=1, sort_keys=True))
    tmp = base / f".tmp-{split}-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    tmp.mkdir()
    try:
        records, captions = [], {}
        for i, s in _generate(split, world, predict):
            rel = f"{split}/{s.meta['classname']}/{i:06d}.png"
            (tmp / s.meta["classname"]).mkdir(exist_ok=True)
            Image.fromarray(s.image).save(tmp / rel.split("/", 1)[1], format="PNG")
            captions[rel] = s.captions
            records.append({"path": rel.split("/", 1)[1], "label": s.label, "index": i, **s.meta})
        (tmp / "captions.json").write_text(json.dumps(captions, indent=0))
        (tmp / "meta.json").write_text(json.dumps(records))
        manifest = {"complete": True, "version": WORLD_VERSION, "world_hash": world.hash(), "split": split,
                    "n": len(records), "sha256": _hash_files(tmp, [r["path"] for r in records]), **extra}
        (tmp / "manifest.json").write_text(json.dumps(manifest, indent=1))
        try:
            os.replace(tmp, folder)
        except OSError:   # another process finished the same split first: keep its (identical) copy
            if not _valid(folder, world, extra):
                raise
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    logger.info("world split '%s' (%d samples) written to %s", split, len(records), folder)
    return folder


class WorldDataset(ImageListDataset):
    """A materialised world split (the :class:`ImageListDataset` contract plus captions).

    ``dataset[i] -> (image, label, i)``; ``captions[i]``: the captions of image ``i``;
    ``meta[i]``: its attributes (colour, size, count, position, style, corruption, ...);
    ``sample_id(i)``: ``"<split>/<classname>/<index>.png"``.
    """

    def __init__(self, folder: Path, transform: Callable | None = None,
                 templates: Sequence[str] = TEMPLATES) -> None:
        self.split = folder.name
        meta = json.loads((folder / "meta.json").read_text())
        caps = json.loads((folder / "captions.json").read_text())
        items = [(f"{self.split}/{r['path']}", int(r["label"])) for r in meta]
        super().__init__(folder.parent, items, CLASSNAMES, transform, list(templates))
        self.captions: list[list[str]] = [caps[p] for p, _ in items]
        self.meta: list[dict] = meta


Filter = tuple[Callable[[np.ndarray], np.ndarray], str]


def build_world_dataset(split: str, root: str | Path = "data/world", transform: Callable | None = None,
                        world: WorldConfig | None = None, templates: Sequence[str] = TEMPLATES,
                        filter: Filter | None = None) -> WorldDataset:
    """The world split ``split`` as a dataset, materialised under ``root`` on first use.

    ``adversarial`` keeps the candidates that the filter model gets wrong: ``filter`` is its
    ``(predict, checkpoint hash)`` (:func:`tasks.world.models.filter_predictor`), and the split is rebuilt
    when it was made with another filter. Without ``filter`` an existing, complete adversarial split is
    read as it is (``python -m tasks.world`` builds it).
    """
    world = world or WorldConfig()
    if split not in SPLITS:
        raise KeyError(f"unknown world split '{split}', expected one of {SPLITS}")
    if split == "adversarial":
        if filter is None:
            folder = world_dir(root, world) / split
            if not _valid(folder, world, {}):
                from tasks.common.data import MissingDataError

                raise MissingDataError(f"the world's adversarial split is not built under '{folder}': it needs the "
                                       "filter model; build it with: python -m tasks.world")
        else:
            folder = materialize_split(split, root, world, predict=filter[0], extra={"filter_sha256": filter[1]})
    else:
        folder = materialize_split(split, root, world)
    return WorldDataset(folder, transform=transform, templates=templates)


def load_split_tensors(split: str, root: str | Path = "data/world",
                       world: WorldConfig | None = None) -> tuple[torch.Tensor, torch.Tensor, list[list[str]]]:
    """``(images uint8 (N, 3, H, W), labels long (N,), captions)`` of a world split, from the PNG cache."""
    world = world or WorldConfig()
    ds = build_world_dataset(split, root, world=world)
    sha = json.loads((Path(ds.root) / split / "manifest.json").read_text())["sha256"]
    return _read_tensors(str(ds.root), tuple(p for p, _ in ds.items), sha) + (ds.captions,)


@lru_cache(maxsize=4)
def _read_tensors(root: str, paths: tuple[str, ...], sha: str) -> tuple[torch.Tensor, torch.Tensor]:
    imgs = []
    for p in paths:
        with Image.open(Path(root) / p) as im:
            imgs.append(np.asarray(im.convert("RGB")))
    labels = [CLASSNAMES.index(p.split("/")[1]) for p in paths]
    x = torch.from_numpy(np.stack(imgs)).permute(0, 3, 1, 2).contiguous()
    return x, torch.tensor(labels, dtype=torch.long)
