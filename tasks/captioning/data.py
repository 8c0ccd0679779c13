"""Caption datasets: Karpathy JSONs, LAVIS-style JSONs, NoCaps validation (by domain).

Every loader returns a list of :class:`CaptionItem` (one per image, with all its references);
:class:`CaptionImageDataset` turns them into ``(image tensor, index)`` items.

Formats (auto-detected by :func:`load_annotations`):

* Karpathy ``dataset_coco.json`` / ``dataset_flickr30k.json``: ``{"images": [{"filepath"?,
  "filename", "split", "sentences": [{"raw": ...}], "cocoid"? / "imgid"}]}``; split ``train``
  includes ``restval`` (the usual 113,287-image COCO training set) unless told otherwise.
* LAVIS ``coco_karpathy_{train,val,test}.json`` / ``flickr30k_test.json`` and the official RLCF
  NoCaps files: a list of ``{"image": "<relative path>", "caption": str | [str], "image_id"?}``
  (training files have one entry per caption; they are grouped by image).
* NoCaps ``nocaps_val_4500_captions.json`` (COCO format): ``{"images": [{"id", "file_name",
  "domain"}], "annotations": [{"image_id", "caption"}]}``; ``domain`` in ``in-domain``,
  ``near-domain``, ``out-domain``.
"""
from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

from PIL import Image
from torch.utils.data import Dataset

from tasks.common.data import MissingDataError, require_path

logger = logging.getLogger(__name__)

__all__ = ["CaptionItem", "load_annotations", "load_karpathy", "load_lavis", "load_nocaps",
           "CaptionImageDataset", "NOCAPS_DOMAINS", "resolve_image"]

NOCAPS_DOMAINS = {"in": "in-domain", "near": "near-domain", "out": "out-domain"}


@dataclass
class CaptionItem:
    """One image and its reference captions.

    Attributes:
        image: image path relative to the images root (or absolute).
        image_id: dataset id (COCO id, Flickr file stem, NoCaps id); stable across runs.
        references: reference captions (raw text).
        domain: NoCaps domain (``in-domain`` ...) or ``None``.
    """

    image: str
    image_id: str
    references: list[str] = field(default_factory=list)
    domain: str | None = None


def _read_json(path: str | Path, what: str) -> Any:
    p = require_path(path, what, "See docs of tasks.captioning.data for the expected files.")
    with open(p, encoding="utf-8") as f:
        return json.load(f)


def _karpathy_splits(split: str, merge_restval: bool) -> set[str]:
    if split == "train" and merge_restval:
        return {"train", "restval"}
    return {split}


def load_karpathy(path: str | Path, split: str = "test", merge_restval: bool = True) -> list[CaptionItem]:
    """Karpathy's ``dataset_{coco,flickr30k}.json``: images of ``split`` (``train``/``val``/``test``)."""
    return _from_karpathy(_read_json(path, "Karpathy split file"), split, merge_restval)


def _from_karpathy(data: dict, split: str, merge_restval: bool = True) -> list[CaptionItem]:
    keep = _karpathy_splits(split, merge_restval)
    out = []
    for im in data["images"]:
        if im.get("split") not in keep:
            continue
        rel = f"{im['filepath']}/{im['filename']}" if im.get("filepath") else im["filename"]
        iid = im.get("cocoid", Path(im["filename"]).stem)
        out.append(CaptionItem(rel, str(iid), [s["raw"].strip() for s in im.get("sentences", [])]))
    if not out:
        raise ValueError(f"no image of split {sorted(keep)} in this Karpathy file")
    return out


def load_lavis(path: str | Path) -> list[CaptionItem]:
    """LAVIS-style list of ``{"image", "caption", "image_id"?}``, grouped by image (file order kept)."""
    return _from_lavis(_read_json(path, "LAVIS-style annotation file"))


def _from_lavis(data: list) -> list[CaptionItem]:
    items: dict[str, CaptionItem] = {}
    for e in data:
        caps = e["caption"] if isinstance(e["caption"], list) else [e["caption"]]
        iid = str(e.get("image_id", Path(e["image"]).stem))
        item = items.setdefault(e["image"], CaptionItem(e["image"], iid))
        item.references.extend(c.strip() for c in caps)
    return list(items.values())


def load_nocaps(path: str | Path, domain: str | None = None) -> list[CaptionItem]:
    """NoCaps ``nocaps_val_4500_captions.json``; ``domain`` in ``in``/``near``/``out`` (or the full
    names ``in-domain`` ...), ``None`` for all."""
    return _from_coco_format(_read_json(path, "NoCaps annotation file"), domain)


def _from_coco_format(data: dict, domain: str | None) -> list[CaptionItem]:
    want = NOCAPS_DOMAINS.get(domain, domain) if domain is not None else None
    if want is not None and want not in NOCAPS_DOMAINS.values():
        raise ValueError(f"unknown NoCaps domain '{domain}'; choose from {sorted(NOCAPS_DOMAINS)}")
    refs: dict[Any, list[str]] = {}
    for a in data.get("annotations", []):
        refs.setdefault(a["image_id"], []).append(a["caption"].strip())
    out = [CaptionItem(im["file_name"], str(im["id"]), refs.get(im["id"], []), im.get("domain"))
           for im in data["images"] if want is None or im.get("domain") == want]
    if not out:
        raise ValueError(f"no image of domain '{want}' in this file")
    return out


def load_annotations(path: str | Path, split: str = "test", domain: str | None = None,
                     merge_restval: bool = True) -> list[CaptionItem]:
    """Any supported caption file (format detected from its content).

    Args:
        path: the JSON file.
        split: Karpathy split (ignored by the other formats: a LAVIS file is one split).
        domain: NoCaps domain filter (COCO-format and LAVIS files with a ``domain`` field).
    """
    from ..common.lists import LIST_SUFFIXES, read_list

    if Path(path).suffix.lower() in LIST_SUFFIXES:   # your own images: path[,reference...] rows
        return [CaptionItem(str(r.file), Path(r.path).stem, list(r.values)) for r in
                read_list(path, check_files=True, min_values=0)]
    data = _read_json(path, "caption annotation file")
    if isinstance(data, list):
        items = _from_lavis(data)
        if domain is not None:
            want = NOCAPS_DOMAINS.get(domain, domain)
            items = [i for i in items if i.domain in (None, want)]
        return items
    if isinstance(data, dict) and "images" in data:
        if data["images"] and "sentences" in data["images"][0]:
            return _from_karpathy(data, split, merge_restval)
        return _from_coco_format(data, domain)
    raise ValueError(f"unrecognised caption annotation format in '{path}': expected a Karpathy file "
                     "(images with sentences), a LAVIS list of {image, caption} or a COCO-format file")


def resolve_image(root: str | Path, rel: str, subdirs: Sequence[str] = ()) -> Path:
    """``root/rel``, else ``root/<file name>``, else ``root/<subdir>/<file name>`` for ``subdirs`` (LAVIS
    paths carry a sub-folder, Karpathy's bare file names do not: either root works)."""
    root = Path(root)
    name = Path(rel).name
    cands = [root / rel, root / name] + [root / d / name for d in subdirs]
    for cand in cands:
        if cand.is_file():
            return cand
    raise MissingDataError(f"image '{rel}' not found under '{root}' (tried {', '.join(map(str, cands[:3]))}"
                           f"{' ...' if len(cands) > 3 else ''}): check the images root")


class CaptionImageDataset(Dataset):
    """Images of :class:`CaptionItem` s: ``ds[i] -> (transform(PIL image), i)``.

    Args:
        items: the annotation items.
        images_root: folder the item paths are relative to (checked at construction).
        transform: e.g. the CLIP preprocess (``PIL -> [3, H, W]``); ``None`` returns the PIL image.
    """

    def __init__(self, items: Sequence[CaptionItem], images_root: str | Path,
                 transform: Callable | None = None) -> None:
        self.items = list(items)
        self.root = require_path(images_root, "images folder")
        self.transform = transform
        self.subdirs = sorted(p.name for p in self.root.iterdir() if p.is_dir())
        if self.items:
            found = resolve_image(self.root, self.items[0].image, self.subdirs)  # fail fast on a wrong root
            if found.parent != self.root and found != self.root / self.items[0].image:
                self.subdirs = [found.parent.name]   # e.g. flickr30k-images/ for Karpathy file names

    def __len__(self) -> int:
        return len(self.items)

    def sample_id(self, i: int) -> str:
        return self.items[i].image_id

    def load_image(self, i: int) -> Image.Image:
        with Image.open(resolve_image(self.root, self.items[i].image, self.subdirs)) as im:
            return im.convert("RGB")

    def __getitem__(self, i: int):
        img = self.load_image(i)
        return (self.transform(img) if self.transform is not None else img), i
