"""The ImageNet family: ``I`` (val), ``A``, ``R``, ``V`` (v2 matched-frequency), ``K`` (Sketch), ``C``
(``C/<corruption>/<severity>``), read from their real folder layouts.

ImageNet labels index the sorted 1000 wnids shipped by timm. A/R labels live in their 200-class space
(sorted wnids of timm's ``imagenet_{a,r}_synsets.txt``); ``dataset.class_indices`` maps each to its
1000-class index. V labels are ``int(folder name)``, never ``ImageFolder``'s string order. Class names
default to CLIP's curated ImageNet names from open_clip; no class list is typed by hand.
"""
from __future__ import annotations

import functools
import logging
import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any


logger = logging.getLogger(__name__)

from tasks.common.data import MissingDataError

from .base import (NAME_SOURCES, ClassificationDataset, DatasetLayoutError, Template, _open_clip_metadata, _timm_info,
                   first_dir, is_stray, list_images, missing_error, names_from_file, resolve_templates)

__all__ = ["imagenet_wnids", "imagenet_subset_indices", "imagenet_classnames", "folder_items", "BUILDERS", "ALIASES",
           "build_imagenet", "build_imagenet_a", "build_imagenet_r", "build_imagenet_v2", "build_imagenet_sketch",
           "build_imagenet_c"]

@functools.cache
def imagenet_wnids() -> tuple[str, ...]:
    """The 1000 ImageNet-1k WordNet ids in sorted order (timm's ``imagenet_synsets.txt``)."""
    wnids = tuple(_timm_info("imagenet_synsets.txt"))
    if len(wnids) != 1000 or list(wnids) != sorted(wnids):
        raise RuntimeError("timm's imagenet_synsets.txt is not the sorted list of 1000 wnids")
    return wnids


@functools.cache
def imagenet_subset_indices(subset: str) -> tuple[int, ...]:
    """1000-class indices of the 200 ImageNet-A (``"a"``) or ImageNet-R (``"r"``) classes, ascending.

    Read from timm's ``imagenet_{a,r}_indices.txt`` and checked against ``imagenet_{a,r}_synsets.txt``.
    """
    s = subset.lower()[-1]
    if s not in "ar":
        raise ValueError(f"unknown ImageNet subset {subset!r}: use 'a' or 'r'")
    idx = tuple(int(x) for x in _timm_info(f"imagenet_{s}_indices.txt"))
    wnids = imagenet_wnids()
    synsets = _timm_info(f"imagenet_{s}_synsets.txt")
    if len(idx) != 200 or list(idx) != sorted(idx) or [wnids[i] for i in idx] != synsets:
        raise RuntimeError(f"timm's imagenet_{s}_indices.txt and imagenet_{s}_synsets.txt disagree")
    return idx


def imagenet_classnames(source: str, class_indices: Sequence[int]) -> list[str]:
    """Names of the given 1000-class indices: ``"openai"`` (CLIP's curated names, open_clip),
    ``"wordnet"`` (first WordNet lemma, timm) or a names file (1000 or ``len(class_indices)`` lines,
    or ``"<wnid> <name>"`` lines such as CoOp's ``imagenet/classnames.txt``)."""
    if source.lower() == "openai":
        names = _open_clip_metadata().IMAGENET_CLASSNAMES
        return [names[i] for i in class_indices]
    wnids = imagenet_wnids()
    if source.lower() == "wordnet":
        lemmas = dict(ln.split("\t", 1) for ln in _timm_info("imagenet_synset_to_lemma.txt"))
        return [lemmas[wnids[i]].split(",")[0].strip() for i in class_indices]
    if source.lower() in NAME_SOURCES:
        raise ValueError(f"classnames_source={source!r} is only for the split-JSON datasets; "
                         "ImageNet sets take 'openai', 'wordnet' or a names file")
    return names_from_file(source, len(class_indices), keys=[wnids[i] for i in class_indices], full=class_indices)


# ----------------------------------------------------------------------------- folder-per-class sets
def folder_items(folder: Path, labels: dict[str, int], what: str, layout: str,
                 strict: bool) -> list[tuple[str, int]]:
    """``(path relative to folder, label)`` for every image of ``folder/<class>/``.

    Files at the top level (``README.txt``) and hidden entries are ignored. A class folder not in
    ``labels`` raises :class:`DatasetLayoutError`; expected folders that are absent raise
    :class:`MissingDataError` when ``strict`` and are logged otherwise.
    """
    present, unknown = [], []
    for entry in sorted(os.scandir(folder), key=lambda e: e.name):
        if is_stray(entry.name) or not entry.is_dir():
            if not is_stray(entry.name):
                logger.debug("%s: ignoring file '%s'", what, entry.path)
            continue
        (present if entry.name in labels else unknown).append(entry.name)
    if unknown:
        raise DatasetLayoutError(f"{what}: unknown class folder(s) {unknown[:5]} under '{folder}' "
                                 f"({len(unknown)} in all). Expected layout: {layout}.")
    missing = sorted(set(labels) - set(present), key=labels.__getitem__)
    if missing:
        msg = (f"{what}: {len(missing)} of {len(labels)} class folders missing under '{folder}', "
               f"e.g. {missing[:3]}. Expected layout: {layout}.")
        if strict:
            raise MissingDataError(msg + " Pass strict=False to use the classes present.")
        logger.warning("%s Labels keep the full class space.", msg)
    items = [(p.relative_to(folder).as_posix(), labels[c]) for c in present for p in list_images(folder / c)]
    if not items:
        raise MissingDataError(f"{what}: no images under '{folder}'. Expected layout: {layout}.")
    items.sort(key=lambda t: (t[1], t[0]))
    logger.info("%s: %d images in %d classes from '%s'", what, len(items), len(present), folder)
    return items


def _imagenet_set(set_id: str, what: str, candidates: Sequence[Path], layout: str, *,
                  subset: str | None = None, numeric: bool = False, transform: Callable | None = None,
                  classnames_source: str = "openai", templates: str | Sequence[Template] = "single",
                  strict: bool = True, split: str | None = None, extra_hint: str = "") -> ClassificationDataset:
    """Build an ImageNet-family set whose folders are wnids (or 0..999 when ``numeric``)."""
    if split not in (None, "val", "test"):
        raise ValueError(f"{what} has a single evaluation split ('val'), got split={split!r}")
    folder = first_dir(candidates)
    if folder is None:
        raise missing_error(what, candidates, layout, extra_hint)
    class_indices = list(imagenet_subset_indices(subset)) if subset else list(range(1000))
    wnids = [imagenet_wnids()[i] for i in class_indices]
    keys = [str(i) for i in class_indices] if numeric else wnids
    items = folder_items(folder, {k: y for y, k in enumerate(keys)}, what, layout, strict)
    return ClassificationDataset(
        folder, items, imagenet_classnames(classnames_source, class_indices), transform,
        resolve_templates(templates), set_id=set_id, class_indices=class_indices, wnids=wnids, split="val")


def build_imagenet(root: Path, **kw: Any) -> ClassificationDataset:
    """``I``: ImageNet val, ``<root>/ImageNet/val/<wnid>/`` (TPT) or ``<root>/imagenet/images/val/<wnid>/`` (CoOp)."""
    cands = [root / "ImageNet" / "val", root / "imagenet" / "images" / "val", root / "imagenet" / "val"]
    layout = f"{root}/ImageNet/val/<wnid>/*.JPEG with the 1000 wnid folders (or CoOp's imagenet/images/val/<wnid>/)"
    return _imagenet_set("I", "ImageNet val", cands, layout, **kw)


def _build_subset(subset: str, root: Path, **kw: Any) -> ClassificationDataset:
    name, coop = ("imagenet-a", "imagenet-adversarial") if subset == "a" else ("imagenet-r", "imagenet-rendition")
    layout = (f"{root}/{name}/<wnid>/*.jpg with 200 wnid folders (timm's {name.replace('-', '_')}_synsets.txt; "
              f"a README.txt is ignored), or CoOp's {coop}/{name}/")
    hint = f"Download https://people.eecs.berkeley.edu/~hendrycks/{name}.tar and extract it under '{root}'."
    return _imagenet_set(subset.upper(), f"ImageNet-{subset.upper()}", [root / name, root / coop / name],
                         layout, subset=subset, extra_hint=hint, **kw)


def build_imagenet_a(root: Path, **kw: Any) -> ClassificationDataset:
    """``A``: ImageNet-A, ``<root>/imagenet-a/<wnid>/``, 200 classes."""
    return _build_subset("a", root, **kw)


def build_imagenet_r(root: Path, **kw: Any) -> ClassificationDataset:
    """``R``: ImageNet-R, ``<root>/imagenet-r/<wnid>/``, 200 classes."""
    return _build_subset("r", root, **kw)


def build_imagenet_v2(root: Path, variant: str = "matched-frequency", **kw: Any) -> ClassificationDataset:
    """``V``: ImageNet-V2, ``<root>/imagenetv2-<variant>-format-val/<0..999>/``; label = ``int(folder)``."""
    name = f"imagenetv2-{variant}-format-val"
    layout = f"{root}/{name}/<0..999>/*.jpeg with 1000 numeric folders named by the class index"
    return _imagenet_set("V", "ImageNet-V2", [root / name, root / "imagenetv2" / name], layout, numeric=True, **kw)


def build_imagenet_sketch(root: Path, **kw: Any) -> ClassificationDataset:
    """``K``: ImageNet-Sketch, ``<root>/ImageNet-Sketch/[sketch/]<wnid>/`` or ``imagenet-sketch/images/<wnid>/``."""
    cands = [root / "ImageNet-Sketch" / "sketch", root / "ImageNet-Sketch",
             root / "imagenet-sketch" / "images", root / "imagenet-sketch" / "sketch", root / "imagenet-sketch"]
    layout = f"{root}/ImageNet-Sketch/<wnid>/*.JPEG (or .../sketch/<wnid>/, or CoOp's imagenet-sketch/images/<wnid>/)"
    return _imagenet_set("K", "ImageNet-Sketch", cands, layout, **kw)


def build_imagenet_c(root: Path, corruption: str | None = None, severity: int | str = 5,
                     **kw: Any) -> ClassificationDataset:
    """``C``: ImageNet-C, ``<root>/imagenet-c/<corruption>/<severity>/<wnid>/`` (id ``C/<corruption>/<severity>``)."""
    if not corruption:
        raise ValueError("ImageNet-C needs a corruption: use the id 'C/<corruption>/<severity>' "
                         "(e.g. 'C/gaussian_noise/5') or corruption=..., severity=...")
    sev = int(severity)
    if not 1 <= sev <= 5:
        raise ValueError(f"ImageNet-C severity must be in 1..5, got {severity!r}")
    bases = [root / "imagenet-c", root / "ImageNet-C"]
    base = first_dir(bases)
    hint = ""
    if base is not None:
        hint = f"Corruptions found under '{base}': {sorted(e.name for e in base.iterdir() if e.is_dir())}."
    layout = f"{root}/imagenet-c/<corruption>/<1..5>/<wnid>/*.JPEG"
    return _imagenet_set(f"C/{corruption}/{sev}", f"ImageNet-C {corruption}/{sev}",
                         [b / corruption / str(sev) for b in bases], layout, extra_hint=hint, **kw)


Builder = Callable[..., ClassificationDataset]

BUILDERS: dict[str, Builder] = {
    "I": build_imagenet, "A": build_imagenet_a, "V": build_imagenet_v2, "R": build_imagenet_r,
    "K": build_imagenet_sketch, "C": build_imagenet_c,
}
ALIASES: dict[str, str] = {
    "imagenet": "I", "imagenet-val": "I", "in": "I", "imagenet-a": "A", "imagenet_a": "A", "imageneta": "A",
    "imagenet-r": "R", "imagenet_r": "R", "imagenetr": "R", "imagenet-v2": "V", "imagenetv2": "V",
    "imagenet_v2": "V", "imagenet-sketch": "K", "imagenet_sketch": "K", "imagenetsketch": "K", "s": "K",
    "imagenet-c": "C", "imagenet_c": "C", "imagenetc": "C",
}


