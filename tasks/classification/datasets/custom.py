"""Classification datasets for anyone's data, in the same registry as the benchmarks (records, resume,
sharding, metrics and CIs like the built-in sets):

* ``folder``: ``<root>/<class>/*.{jpg,png,...}``; class names from the folder names (underscores read as
  spaces in prompts), or ``classnames=<file>``: a names file (one per line, in sorted folder order) or a JSON
  map ``{folder: name}``;
* ``list``: a CSV / JSONL of ``path,label`` (:mod:`tasks.common.lists`); string labels are the class names
  (sorted), integer labels index a names file (``classnames=<file>``, one per line);
* :class:`InMemoryDataset`: images you hold in Python (PIL images, ``[3, H, W]`` tensors, numpy arrays).

Every error names the file (and line) and what to do.
"""
from __future__ import annotations

import json
import logging
import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from tasks.common.data import MissingDataError
from tasks.common.lists import ListFileError, read_list

from .base import ClassificationDataset, DatasetLayoutError, is_stray, list_images, read_names_file, resolve_templates

logger = logging.getLogger(__name__)

__all__ = ["build_folder", "build_list", "InMemoryDataset", "BUILDERS"]


def _names_source(source: str | None) -> Path | None:
    if source in (None, "", "openai", "folder", "json", "dataset"):
        return None
    p = Path(source).expanduser()
    if not p.is_file():
        raise MissingDataError(f"class-name file '{p}' not found: one name per line (label order), or a JSON map "
                               "{folder or label: name}")
    return p


def _read_names(path: Path, keys: Sequence[str]) -> list[str]:
    """Names for ``keys`` (folder names or labels) from a JSON map or a one-per-line file."""
    if path.suffix.lower() == ".json":
        mapping = json.loads(path.read_text(encoding="utf-8"))
        missing = [k for k in keys if k not in mapping]
        if missing:
            raise DatasetLayoutError(f"'{path}' has no name for {missing[:3]} ({len(missing)} in all)")
        return [str(mapping[k]) for k in keys]
    names = read_names_file(path)
    if isinstance(names, dict):
        return [names[k] for k in keys]
    if len(names) != len(keys):
        raise DatasetLayoutError(f"'{path}' has {len(names)} names for {len(keys)} classes ({keys[:3]}...)")
    return list(names)


def build_folder(root: Path, transform: Callable | None = None, classnames_source: str = "folder",
                 templates: Any = "single", strict: bool = True, **kw: Any) -> ClassificationDataset:
    """``folder``: one sub-folder per class under ``root`` (sorted), every image below it."""
    if not root.is_dir():
        raise MissingDataError(f"image folder '{root}' not found: expected {root}/<class>/*.jpg")
    classes = sorted(e.name for e in os.scandir(root) if e.is_dir() and not is_stray(e.name))
    if not classes:
        raise DatasetLayoutError(f"no class folders under '{root}': expected {root}/<class>/*.jpg")
    names_file = _names_source(classnames_source)
    names = _read_names(names_file, classes) if names_file else classes
    items = []
    for y, c in enumerate(classes):
        files = list_images(root / c)
        if not files and strict:
            raise MissingDataError(f"class folder '{root / c}' has no images (strict=False skips empty classes)")
        items += [(f.relative_to(root).as_posix(), y) for f in files]
    logger.info("folder dataset %s: %d images in %d classes", root, len(items), len(classes))
    return ClassificationDataset(root, items, names, transform, resolve_templates(templates), set_id="folder",
                                 split="test")


def build_list(root: Path, file: str | None = None, transform: Callable | None = None,
               classnames_source: str | None = None, templates: Any = "single", strict: bool = True,
               **kw: Any) -> ClassificationDataset:
    """``list``: a CSV / JSONL of ``path,label`` rows (``file``; image paths are relative to its folder unless
    absolute; ``root`` is not used)."""
    if file is None:
        raise ListFileError("the list dataset needs its file: data.file=<list.csv | list.jsonl>")
    rows = read_list(file, None, check_files=strict, min_values=1)
    for r in rows:
        if len(r.values) != 1:
            raise ListFileError(f"{file}:{r.line}: a classification row is `path,label`, got {len(r.values)} values")
    labels = [r.values[0] for r in rows]
    names_file = _names_source(classnames_source)
    if all(v.lstrip("-").isdigit() for v in labels):
        if names_file is None:
            raise ListFileError(f"'{file}' has integer labels: give their names with data.classnames=<file> "
                                "(one name per line, line i = label i)")
        names = read_names_file(names_file)
        names = list(names.values()) if isinstance(names, dict) else list(names)
        bad = next((r for r in rows if not 0 <= int(r.values[0]) < len(names)), None)
        if bad is not None:
            raise ListFileError(f"{file}:{bad.line}: label {bad.values[0]} is outside the {len(names)} names of "
                                f"'{names_file}'")
        y = [int(v) for v in labels]
    else:
        keys = sorted(set(labels))
        names = _read_names(names_file, keys) if names_file else keys
        index = {k: i for i, k in enumerate(keys)}
        y = [index[v] for v in labels]
    base = Path(file).expanduser().parent
    items = [(str(r.file.relative_to(base)) if r.file.is_relative_to(base) else str(r.file), yi)
             for r, yi in zip(rows, y)]
    logger.info("list dataset %s: %d images, %d classes", file, len(items), len(names))
    return ClassificationDataset(base, items, names, transform, resolve_templates(templates), set_id="list",
                                 split="test")


class InMemoryDataset(ClassificationDataset):
    """Images held in Python, for ``rlcf`` users: ``InMemoryDataset(images, labels, classnames)``.

    Args:
        images: PIL images, ``[3, H, W]`` tensors (uint8, or float in [0, 1]) or ``[H, W, 3]`` numpy arrays.
        labels: one int in ``[0, len(classnames))`` per image.
        classnames: class names, index = label.
        ids: stable sample ids for the records (default ``"image-<i>"``).
    """

    def __init__(self, images: Sequence[Any], labels: Sequence[int], classnames: Sequence[str],
                 templates: Any = "single", ids: Sequence[str] | None = None) -> None:
        if len(images) != len(labels):
            raise ValueError(f"{len(images)} images for {len(labels)} labels")
        ids = list(ids) if ids is not None else [f"image-{i}" for i in range(len(images))]
        super().__init__(".", list(zip(ids, labels)), classnames, None, resolve_templates(templates),
                         set_id="memory", split="test")
        self.images = list(images)

    def load(self, i: int) -> Any:
        return self.images[i]


BUILDERS: dict[str, Callable[..., ClassificationDataset]] = {"folder": build_folder, "list": build_list}
