"""Retrieval test sets: COCO and Flickr30K Karpathy test splits, and the embedded world.

A retrieval set is a gallery of images, a flat list of (pre-processed) captions and the two
index maps of LAVIS ``RetrievalEvalDataset``: ``img2txt[i]`` lists the caption indices of image
``i`` (5 for COCO/Flickr) and ``txt2img[t]`` is the image of caption ``t``. Caption ``t`` of image
``i`` keeps the order of the annotation file, so indices match the official code's.

Annotation formats (auto-detected from the JSON):

* LAVIS / official RLCF (``coco_karpathy_test.json``, ``flickr30k_test.json``): a list of
  ``{"image": "val2014/COCO_val2014_....jpg", "caption": [5 captions], "image_id": ...}``;
  a ``caption`` given as a single string (training-style files) is grouped by image.
* Karpathy (``dataset_coco.json``, ``dataset_flickr30k.json``): ``{"images": [{"split",
  "filepath"?, "filename", "sentences": [{"raw": ...}], "cocoid"?}]}``; images with
  ``split == "test"`` are kept. Flickr30K entries have no ``filepath``: their images are looked
  up in ``flickr30k-images/`` (the folder of the LAVIS annotations).

Default layout under ``data.root`` (``data/`` by default; the first file found is used)::

    coco/annotations/coco_karpathy_test.json   or coco/annotations/dataset_coco.json (or coco/dataset_coco.json)
    coco/images/val2014/COCO_val2014_000000391895.jpg      (image roots tried: coco/images, coco, coco2014)
    flickr30k/annotations/flickr30k_test.json  or flickr30k/annotations/dataset_flickr30k.json
    flickr30k/images/flickr30k-images/1000092795.jpg        (image roots tried: flickr30k/images, flickr30k)

A dataset provider's split (``data.dataset: <provider>/<split>``, e.g. the embedded world's ``world/rendition``:
its images and their 5 captions each, :mod:`tasks.common.providers`) under its folder of ``data.root``.

Captions go through :func:`pre_caption` (LAVIS ``blip_caption``, the official pre-processing).
"""
from __future__ import annotations

import json
import logging
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from PIL import Image

from ..common.data import MissingDataError
from ..common.providers import get_provider, is_provider

logger = logging.getLogger(__name__)

__all__ = ["pre_caption", "RetrievalData", "parse_lavis", "parse_karpathy", "read_annotations",
           "build_retrieval_data", "DATASETS", "dataset_tag"]

_PUNCT = re.compile(r"([.!\"()*#:;~])")
_SPACES = re.compile(r"\s{2,}")


def pre_caption(caption: str, max_words: int = 50) -> str:
    """LAVIS ``BlipCaptionProcessor.pre_caption``: lowercase, each of ``.!"()*#:;~`` becomes a
    space, runs of 2+ whitespace collapse to one space, strip, keep the first ``max_words`` words."""
    caption = _SPACES.sub(" ", _PUNCT.sub(" ", caption.lower()))
    caption = caption.rstrip("\n").strip(" ")
    words = caption.split(" ")
    return " ".join(words[:max_words]) if len(words) > max_words else caption


@dataclass
class RetrievalData:
    """A retrieval test set (see module docstring).

    Attributes:
        name: dataset tag (``coco``, ``flickr30k``, ``world_val``).
        image_ids: ``N_img`` stable image ids (relative paths or world ids).
        texts: ``N_txt`` pre-processed captions, grouped by image.
        img2txt: ``N_img`` lists of caption indices.
        txt2img: ``N_txt`` image indices.
        loader: ``i -> PIL.Image`` (RGB) of gallery image ``i``.
    """

    name: str
    image_ids: list[str]
    texts: list[str]
    img2txt: list[list[int]]
    txt2img: list[int]
    loader: Callable[[int], Image.Image] = field(repr=False, default=None)  # type: ignore[assignment]

    @classmethod
    def from_groups(cls, name: str, image_ids: Sequence[str], captions: Sequence[Sequence[str]],
                    loader: Callable[[int], Image.Image], max_words: int | None = 50) -> RetrievalData:
        """Build the flat caption list and both index maps from per-image caption lists."""
        texts, img2txt, txt2img = [], [], []
        for i, caps in enumerate(captions):
            if not caps:
                raise ValueError(f"image '{image_ids[i]}' of dataset '{name}' has no caption")
            img2txt.append(list(range(len(texts), len(texts) + len(caps))))
            for c in caps:
                texts.append(pre_caption(c, max_words) if max_words else c)
                txt2img.append(i)
        return cls(name, list(image_ids), texts, img2txt, txt2img, loader)

    @property
    def n_images(self) -> int:
        return len(self.image_ids)

    @property
    def n_texts(self) -> int:
        return len(self.texts)

    def text_id(self, t: int) -> str:
        """``<image id>#<k>``: caption ``k`` of its image."""
        i = self.txt2img[t]
        return f"{self.image_ids[i]}#{self.img2txt[i].index(t)}"

    def load_image(self, i: int) -> Image.Image:
        return self.loader(i)

    def subset(self, n_images: int) -> RetrievalData:
        """The first ``n_images`` images and all their captions (indices renumbered)."""
        if n_images >= self.n_images:
            return self
        caps = [[self.texts[t] for t in self.img2txt[i]] for i in range(n_images)]
        return RetrievalData.from_groups(self.name, self.image_ids[:n_images], caps, self.loader, max_words=None)


# ------------------------------------------------------------------------------------- parsing
def parse_lavis(entries: list[dict]) -> tuple[list[str], list[list[str]]]:
    """LAVIS list ``[{"image", "caption": [..] | str}]`` -> ``(image paths, captions per image)``,
    in first-appearance order of the images."""
    order: dict[str, list[str]] = {}
    for e in entries:
        if "image" not in e or "caption" not in e:
            raise ValueError(f"LAVIS retrieval entry without 'image'/'caption': {str(e)[:200]}")
        caps = e["caption"] if isinstance(e["caption"], list) else [e["caption"]]
        order.setdefault(e["image"], []).extend(caps)
    return list(order), list(order.values())


def parse_karpathy(data: dict, split: str = "test", default_dir: str = "") -> tuple[list[str], list[list[str]]]:
    """Karpathy ``{"images": [...]}`` -> images of ``split`` (``filepath/filename``, or
    ``default_dir/filename`` without ``filepath``) and their ``sentences[].raw``."""
    paths, caps = [], []
    for im in data["images"]:
        if im.get("split") != split:
            continue
        folder = im.get("filepath") or default_dir
        paths.append(f"{folder}/{im['filename']}" if folder else im["filename"])
        caps.append([s["raw"] for s in im["sentences"]])
    if not paths:
        raise ValueError(f"no image with split '{split}' in the Karpathy file")
    return paths, caps


def read_annotations(path: str | Path, split: str = "test", default_dir: str = "") -> tuple[list[str], list[list[str]]]:
    """Read either format (see module docstring) -> ``(relative image paths, captions per image)``."""
    p = Path(path)
    if not p.is_file():
        raise MissingDataError(f"retrieval annotation file '{p}' not found")
    with open(p, encoding="utf-8") as f:
        data: Any = json.load(f)
    if isinstance(data, list):
        return parse_lavis(data)
    if isinstance(data, dict) and "images" in data:
        return parse_karpathy(data, split, default_dir)
    raise ValueError(f"'{p}' is neither a LAVIS retrieval list nor a Karpathy dataset_*.json "
                     "({'images': [...]}); see tasks/retrieval/data.py for both formats")


# ------------------------------------------------------------------------------------ datasets
@dataclass(frozen=True)
class DatasetLayout:
    annotations: tuple[str, ...]      # candidates, relative to data.root, first found wins
    image_roots: tuple[str, ...]      # candidates, relative to data.root
    karpathy_dir: str = ""            # folder of Karpathy entries without ``filepath``


DATASETS: dict[str, DatasetLayout] = {
    "coco": DatasetLayout(("coco/annotations/coco_karpathy_test.json", "coco/annotations/dataset_coco.json",
                           "coco/dataset_coco.json"), ("coco/images", "coco", "coco2014")),
    "flickr30k": DatasetLayout(("flickr30k/annotations/flickr30k_test.json",
                                "flickr30k/annotations/dataset_flickr30k.json", "flickr30k/dataset_flickr30k.json"),
                               ("flickr30k/images", "flickr30k"), karpathy_dir="flickr30k-images"),
}
_ALIASES = {"flickr": "flickr30k", "coco2014": "coco", "mscoco": "coco"}


def dataset_tag(name: str) -> str:
    """Folder-safe canonical name: ``flickr`` -> ``flickr30k``, ``world/val`` -> ``world_val``."""
    return _ALIASES.get(name, name).replace("/", "_")


def _layout_hint(name: str, layout: DatasetLayout) -> str:
    return (f"Expected one of {', '.join(layout.annotations)} under data.root (LAVIS list of "
            "{'image', 'caption': [...]} or Karpathy dataset_*.json), with the images under one of "
            f"{', '.join(layout.image_roots)} (e.g. <root>/{layout.image_roots[0]}/<image path of the annotation>); "
            "or set data.annotations and data.images. See tasks/retrieval/data.py.")


def _find_annotations(root: Path, name: str, layout: DatasetLayout, override: str | None) -> Path:
    if override:
        p = Path(override).expanduser()
        if not p.is_file():
            raise MissingDataError(f"{name} annotation file '{p}' (data.annotations) not found. "
                                   + _layout_hint(name, layout))
        return p
    for rel in layout.annotations:
        if (root / rel).is_file():
            return root / rel
    raise MissingDataError(f"{name} retrieval annotations not found under '{root}': tried "
                           f"{', '.join(str(root / r) for r in layout.annotations)}. " + _layout_hint(name, layout))


def _find_image_root(root: Path, name: str, layout: DatasetLayout, paths: list[str], override: str | None) -> Path:
    candidates = [Path(override).expanduser()] if override else [root / r for r in layout.image_roots]
    for c in candidates:
        if (c / paths[0]).is_file():
            return c
    raise MissingDataError(f"{name} image '{paths[0]}' not found in any of {', '.join(map(str, candidates))}. "
                           + _layout_hint(name, layout))


def _file_loader(image_root: Path, paths: list[str]) -> Callable[[int], Image.Image]:
    def load(i: int) -> Image.Image:
        with Image.open(image_root / paths[i]) as im:
            return im.convert("RGB")
    return load


def build_file_dataset(name: str, root: str | Path = "data", annotations: str | None = None,
                       images: str | None = None, max_words: int = 50, split: str = "test") -> RetrievalData:
    """COCO / Flickr30K test split from disk (see module docstring for the layout).

    Raises:
        MissingDataError: the annotation file, the image folder or some gallery image is missing.
    """
    key = _ALIASES.get(name, name)
    if key not in DATASETS:
        raise KeyError(f"unknown retrieval dataset '{name}'; choose from {sorted(DATASETS)} or <provider>/<split> "
                       "(world/<split>)")
    layout, root = DATASETS[key], Path(root).expanduser()
    ann = _find_annotations(root, key, layout, annotations)
    paths, caps = read_annotations(ann, split, layout.karpathy_dir)
    image_root = _find_image_root(root, key, layout, paths, images)
    missing = [p for p in paths if not (image_root / p).is_file()]
    if missing:
        raise MissingDataError(f"{len(missing)} of {len(paths)} {key} gallery images are missing under "
                               f"'{image_root}' (e.g. {missing[:3]}). " + _layout_hint(key, layout))
    logger.info("%s: %d images, %d captions from %s (images in %s)", key, len(paths),
                sum(len(c) for c in caps), ann, image_root)
    return RetrievalData.from_groups(key, paths, caps, _file_loader(image_root, paths), max_words)


def build_provider_data(provider: str, split: str, root: str | Path = "data", max_words: int = 50) -> RetrievalData:
    """Split ``split`` of the dataset provider ``provider`` (e.g. the embedded world's, under ``<root>/world``, built
    on first use) as a retrieval set: its images and their captions."""
    p = get_provider(provider)
    if p.retrieval is None:
        raise KeyError(f"the dataset provider '{provider}' has no retrieval sets")
    ids, captions, load = p.retrieval(split, Path(root))
    return RetrievalData.from_groups(f"{provider}_{split}", ids, captions, load, max_words)


def build_list_data(path: str | Path, max_words: int = 50) -> RetrievalData:
    """Your own retrieval set: a CSV / JSONL list of ``path,caption[,caption...]`` (:mod:`tasks.common.lists`;
    image paths relative to the list file's folder)."""
    from ..common.lists import read_list

    rows = read_list(path, check_files=True, min_values=1)
    files = [r.file for r in rows]

    def load(i: int) -> Image.Image:
        with Image.open(files[i]) as im:
            return im.convert("RGB")

    return RetrievalData.from_groups(Path(path).stem, [r.path for r in rows], [list(r.values) for r in rows], load,
                                     max_words)


def build_retrieval_data(cfg: dict) -> RetrievalData:
    """From the ``data`` config section: ``dataset`` (``coco`` | ``flickr30k`` | ``<provider>/<split>`` | ``list``,
    with ``annotations`` the list file), ``root``, ``annotations``, ``images``, ``max_words``, ``max_images``."""
    name = cfg["dataset"]
    if name == "list":
        if not cfg.get("annotations"):
            from ..common.lists import ListFileError

            raise ListFileError("data.dataset=list needs data.annotations=<list.csv | list.jsonl> (path,caption,...)")
        data = build_list_data(cfg["annotations"], cfg["max_words"])
    elif "/" in name and is_provider(name.split("/", 1)[0]):
        data = build_provider_data(*name.split("/", 1), cfg["root"], cfg["max_words"])
    else:
        data = build_file_dataset(name, cfg["root"], cfg.get("annotations"), cfg.get("images"), cfg["max_words"])
    if cfg.get("max_images"):
        data = data.subset(int(cfg["max_images"]))
    return data
