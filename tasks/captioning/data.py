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

Images (:class:`ImageResolver`, the one rule of the loaders and of the pre-flight check
:mod:`tasks.captioning.check`): the images root is the dataset folder or its ``images/`` folder; canonical layout
``flickr30k/images/flickr30k-images/``, ``coco/images/{train2014,val2014}/``, ``nocaps/images/`` (README.md, "Data
layout"); the older ``flickr30k/flickr30k-images/`` works too.
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
           "CaptionImageDataset", "NOCAPS_DOMAINS", "resolve_image", "ImageResolver", "image_bases"]

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
        rows = read_list(path, check_files=True, min_values=0)
        from collections import Counter

        stems = [Path(r.path).stem for r in rows]
        n = Counter(stems)
        # the image id is the file stem, or the path as written where two files share a stem (cat/1.jpg, dog/1.jpg)
        ids = [st if n[st] == 1 else Path(r.path).with_suffix("").as_posix() for st, r in zip(stems, rows)]
        twice = [i for i, c in Counter(ids).items() if c > 1]
        if twice:
            dup = twice[0]
            raise ValueError(f"{path}: the image '{dup}' is listed twice; give each image one row with all its "
                             "references")
        return [CaptionItem(str(r.file), i, list(r.values)) for r, i in zip(rows, ids)]
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


def image_bases(root: str | Path) -> list[Path]:
    """The folders an annotation's image paths are tried under: the images root, then its ``images/`` folder when
    there is one. So the dataset folder (``flickr30k/``) and its ``images/`` folder both work as the root, for the
    canonical layout ``flickr30k/images/flickr30k-images/`` and the older ``flickr30k/flickr30k-images/`` alike."""
    root = Path(root)
    return [root, root / "images"] if (root / "images").is_dir() else [root]


def _subdirs(base: Path) -> list[str]:
    return sorted(p.name for p in base.iterdir() if p.is_dir() and not p.name.startswith(".")) if base.is_dir() else []


def _candidates(base: Path, rel: str, subdirs: Sequence[str]) -> list[Path]:
    name = Path(rel).name
    return [base / rel, base / name] + [base / d / name for d in subdirs]


def resolve_image(root: str | Path, rel: str, subdirs: Sequence[str] = ()) -> Path:
    """``root/rel``, else ``root/<file name>``, else ``root/<subdir>/<file name>`` for ``subdirs`` (LAVIS
    paths carry a sub-folder, Karpathy's bare file names do not: either root works)."""
    root = Path(root)
    cands = _candidates(root, rel, subdirs)
    for cand in cands:
        if cand.is_file():
            return cand
    raise MissingDataError(f"image '{rel}' not found under '{root}' (tried {', '.join(map(str, cands[:3]))}"
                           f"{' ...' if len(cands) > 3 else ''}): check the images root")


class ImageResolver:
    """Where the images of an annotation file are: the one rule of the loaders and of the pre-flight check.

    An image path ``rel`` is tried as ``<base>/rel``, ``<base>/<file name>`` and ``<base>/<sub-folder>/<file name>``
    for each base of :func:`image_bases`. The first path found (``probe``) fixes the base and sub-folder, so later
    look-ups cost one ``stat``; a path that does not follow it falls back to the full search.

    Raises:
        MissingDataError: the root is missing, or ``probe`` (and later a path) resolves nowhere; the message names
            the image, the root and the paths tried.
    """

    def __init__(self, root: str | Path, probe: str | None = None) -> None:
        self.root = require_path(root, "images folder")
        self.base, self.subdirs = self.root, _subdirs(self.root)
        if probe is not None:
            self.locate(probe)

    def locate(self, rel: str) -> Path:
        """Full search of ``rel``; on success the base and sub-folder it was found in become the default."""
        tried: list[Path] = []
        for base in image_bases(self.root):
            subs = _subdirs(base)
            for cand in _candidates(base, rel, subs):
                tried.append(cand)
                if cand.is_file():
                    via_sub = cand != base / rel and cand.parent != base
                    self.base, self.subdirs = base, ([cand.parent.name] if via_sub else subs)
                    return cand
        raise MissingDataError(f"image '{rel}' not found under the images root '{self.root}': expected "
                               f"'{self.root / 'images' / rel}' or '{self.root / rel}' (tried "
                               f"{', '.join(map(str, tried[:4]))}{' ...' if len(tried) > 4 else ''}). Layout: "
                               "'Data layout' in README.md; or point the images root elsewhere")

    def __call__(self, rel: str) -> Path:
        try:
            return resolve_image(self.base, rel, self.subdirs)
        except MissingDataError:
            return self.locate(rel)


class CaptionImageDataset(Dataset):
    """Images of :class:`CaptionItem` s: ``ds[i] -> (transform(PIL image), i)``.

    Args:
        items: the annotation items.
        images_root: folder the item paths are relative to, or the folder holding it as ``images/`` (see
            :class:`ImageResolver`; the first item is resolved at construction).
        transform: e.g. the CLIP preprocess (``PIL -> [3, H, W]``); ``None`` returns the PIL image.
    """

    def __init__(self, items: Sequence[CaptionItem], images_root: str | Path,
                 transform: Callable | None = None) -> None:
        self.items = list(items)
        self.transform = transform
        # fails fast on a wrong root; fixes e.g. images/flickr30k-images/ for Karpathy's bare file names
        self.resolver = ImageResolver(images_root, self.items[0].image if self.items else None)
        self.root = self.resolver.root

    @property
    def subdirs(self) -> list[str]:
        """The sub-folder(s) bare file names are looked up in (under :attr:`base`)."""
        return self.resolver.subdirs

    @property
    def base(self) -> Path:
        """The folder the image paths were found under (the root or its ``images/`` folder)."""
        return self.resolver.base

    def __len__(self) -> int:
        return len(self.items)

    def sample_id(self, i: int) -> str:
        return self.items[i].image_id

    def load_image(self, i: int) -> Image.Image:
        with Image.open(self.resolver(self.items[i].image)) as im:
            return im.convert("RGB")

    def __getitem__(self, i: int):
        img = self.load_image(i)
        return (self.transform(img) if self.transform is not None else img), i
