"""Fine-grained test sets: CoOp split JSONs (``split_zhou_<Name>.json``) and FGVC-Aircraft.

A split JSON has the keys ``train``/``val``/``test``; each entry is ``[relative_path, int_label, classname]``
with the path relative to a per-dataset image root. Both folder conventions are accepted under
``data_root``:

* CoOp (``DATASETS.md``): ``oxford_pets/{images/, split_zhou_OxfordPets.json}``, ``caltech-101/101_ObjectCategories``,
  ``dtd/images``, ``eurosat/2750``, ``oxford_flowers/jpg``, ``food-101/images``, ``stanford_cars/`` (paths
  begin ``cars_test/``), ``sun397/SUN397``, ``ucf101/UCF-101-midframes``, ``fgvc_aircraft/``;
* TPT (``data/datautils.py::ID_to_DIRNAME``): ``OxfordPets/``, ``Caltech101/``, ``DTD/``, ``eurosat/``,
  ``Flower102/``, ``Food101/``, ``StanfordCars/``, ``SUN397/``, ``UCF101/``, where the image root may be the
  folder itself and the split JSONs may sit in ``<data_root>/data_splits/`` (TPT ships them there).

FGVC-Aircraft has no JSON: ``images_variant_<split>.txt`` lines are ``"<image_id> <variant name>"``,
labels are the line index of the variant in ``variants.txt``, images are ``images/<image_id>.jpg``.
"""
from __future__ import annotations

import json
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tasks.common.data import MissingDataError

from .base import (NAME_SOURCES, ClassificationDataset, DatasetLayoutError, Template, first_dir, missing_error,
                   names_from_file, resolve_templates)

logger = logging.getLogger(__name__)

__all__ = ["ALIASES", "BUILDERS", "SPECS", "FewShotSpec", "build_aircraft", "build_split_json", "read_split_json"]


@dataclass(frozen=True)
class FewShotSpec:
    """Where a split-JSON dataset lives and how CoOp prompts it.

    Attributes:
        set_id: the official TPT/RLCF id.
        dirs: dataset folder names tried under ``data_root`` (CoOp name first, then TPT's).
        image_dir: image root inside the CoOp folder (``""``: the folder itself).
        split_file: CoOp split JSON file name.
        template: CoOp's single-sentence prompt (``trainers/zsclip.py::CUSTOM_TEMPLATES``).
        aliases: extra lower-case ids.
    """

    set_id: str
    dirs: tuple[str, ...]
    image_dir: str
    split_file: str
    template: str
    aliases: tuple[str, ...] = ()


SPECS: dict[str, FewShotSpec] = {s.set_id: s for s in (
    FewShotSpec("Caltech101", ("caltech-101", "Caltech101"), "101_ObjectCategories", "split_zhou_Caltech101.json",
                "a photo of a {}.", ("caltech-101", "caltech_101")),
    FewShotSpec("DTD", ("dtd", "DTD"), "images", "split_zhou_DescribableTextures.json",
                "{} texture.", ("describabletextures", "describable_textures")),
    FewShotSpec("eurosat", ("eurosat", "EuroSAT"), "2750", "split_zhou_EuroSAT.json",
                "a centered satellite photo of {}.", ()),
    FewShotSpec("Flower102", ("oxford_flowers", "Flower102", "Flowers102"), "jpg", "split_zhou_OxfordFlowers.json",
                "a photo of a {}, a type of flower.", ("flowers102", "oxfordflowers", "oxford_flowers", "flowers")),
    FewShotSpec("Food101", ("food-101", "Food101"), "images", "split_zhou_Food101.json",
                "a photo of {}, a type of food.", ("food-101", "food_101")),
    FewShotSpec("Pets", ("oxford_pets", "OxfordPets"), "images", "split_zhou_OxfordPets.json",
                "a photo of a {}, a type of pet.", ("oxfordpets", "oxford_pets", "oxford-pets")),
    FewShotSpec("Cars", ("stanford_cars", "StanfordCars"), "", "split_zhou_StanfordCars.json",
                "a photo of a {}.", ("stanfordcars", "stanford_cars", "stanford-cars")),
    FewShotSpec("SUN397", ("sun397", "SUN397"), "SUN397", "split_zhou_SUN397.json", "a photo of a {}.", ()),
    FewShotSpec("UCF101", ("ucf101", "UCF101"), "UCF-101-midframes", "split_zhou_UCF101.json",
                "a photo of a person doing {}.", ("ucf-101", "ucf_101")),
)}
AIRCRAFT_DIRS: tuple[str, ...] = ("fgvc_aircraft", "fgvc-aircraft-2013b/data", "fgvc-aircraft-2013b", "FGVCAircraft")
AIRCRAFT_TEMPLATE = "a photo of a {}, a type of aircraft."


def read_split_json(path: str | Path, split: str = "test") -> tuple[list[tuple[str, int]], list[str]]:
    """Items of ``split`` and the class names (label order, from all splits) of a CoOp split JSON.

    Raises:
        DatasetLayoutError: unknown split, malformed entries, or a label with two names / no name.
    """
    p = Path(path)
    with p.open(encoding="utf-8") as f:
        data = json.load(f)
    if split not in data:
        raise DatasetLayoutError(f"split {split!r} not in '{p}' (keys: {sorted(data)})")
    names: dict[int, str] = {}
    for key, entries in data.items():
        for e in entries:
            if not (isinstance(e, list) and len(e) == 3):
                raise DatasetLayoutError(f"'{p}' [{key}]: entry {e!r} is not [relative_path, int_label, classname]")
            y, name = int(e[1]), str(e[2])
            if names.setdefault(y, name) != name:
                raise DatasetLayoutError(f"'{p}': label {y} is named both {names[y]!r} and {name!r}")
    n = max(names) + 1 if names else 0
    if sorted(names) != list(range(n)):
        raise DatasetLayoutError(f"'{p}': labels {sorted(set(range(n)) - set(names))[:5]} have no entry in any split")
    items = [(str(e[0]), int(e[1])) for e in data[split]]
    return items, [names[y] for y in range(n)]


def _dataset_names(source: str, own: list[str], what: str) -> list[str]:
    """Class names for a non-ImageNet set: its own names (``openai``/``json``/``dataset``) or a names file."""
    if source.lower() in ("openai", "json", "dataset"):
        return own
    if source.lower() in NAME_SOURCES:
        raise ValueError(f"classnames_source={source!r} does not apply to {what}; use 'json' or a names file")
    return names_from_file(source, len(own))


def _check_files(root: Path, items: list[tuple[str, int]], what: str, layout: str,
                 strict: bool) -> list[tuple[str, int]]:
    """Drop (``strict=False``) or report (``strict=True``) items whose image file is absent."""
    absent = [p for p, _ in items if not (root / p).is_file()]
    if not absent:
        return items
    msg = (f"{what}: {len(absent)} of {len(items)} images missing under '{root}', e.g. {absent[:3]}. "
           f"Expected layout: {layout}.")
    if strict or len(absent) == len(items):
        raise MissingDataError(msg + ("" if len(absent) == len(items) else " Pass strict=False to skip them."))
    logger.warning("%s Skipping them.", msg)
    gone = set(absent)
    return [t for t in items if t[0] not in gone]


def build_split_json(spec: FewShotSpec, root: Path, *, transform: Callable | None = None,
                     classnames_source: str = "openai", templates: str | Sequence[Template] = "single",
                     split: str | None = "test", split_file: str | Path | None = None,
                     strict: bool = True) -> ClassificationDataset:
    """Build a CoOp split-JSON dataset (see the module docstring for the accepted layouts)."""
    split = split or "test"
    sub = f"{spec.image_dir}/" if spec.image_dir else ""
    layout = (f"{root}/{spec.dirs[0]}/{{{sub}, {spec.split_file}}} (CoOp DATASETS.md) or "
              f"{root}/{spec.dirs[1]}/ with the JSON in {root}/data_splits/ (TPT)")
    ds_dir = first_dir([root / d for d in spec.dirs])
    if ds_dir is None:
        raise missing_error(spec.set_id, [root / d for d in spec.dirs], layout)
    if split_file is not None:
        json_cands = [Path(split_file).expanduser()]
    else:
        json_cands = [ds_dir / spec.split_file, root / "data_splits" / spec.split_file,
                      root / "splits" / spec.split_file, root / spec.split_file]
    json_path = next((p for p in json_cands if p.is_file()), None)
    if json_path is None:
        raise missing_error(f"{spec.set_id} split file", json_cands, layout,
                            "Get the split JSON from CoOp's DATASETS.md or pass split_file=...")
    items, own = read_split_json(json_path, split)
    own = [n.replace("_", " ") for n in own]
    # The image root is the CoOp sub-folder, or the dataset folder itself (TPT layout).
    roots = [ds_dir / spec.image_dir, ds_dir] if spec.image_dir else [ds_dir]
    probe = items[0][0] if items else ""
    image_root = next((r for r in roots if (r / probe).is_file()), first_dir(roots) or ds_dir)
    items = _check_files(image_root, items, f"{spec.set_id} ({split})", layout, strict)
    logger.info("%s: %d %s images, %d classes, split file '%s'", spec.set_id, len(items), split, len(own), json_path)
    return ClassificationDataset(
        image_root, items, _dataset_names(classnames_source, own, spec.set_id), transform,
        resolve_templates(templates, spec.template), set_id=spec.set_id, split=split)


def build_aircraft(root: Path, *, transform: Callable | None = None, classnames_source: str = "openai",
                   templates: str | Sequence[Template] = "single", split: str | None = "test",
                   strict: bool = True) -> ClassificationDataset:
    """``Aircraft``: FGVC-Aircraft 2013b variants (100 classes), from ``images_variant_<split>.txt``."""
    split = split or "test"
    layout = (f"{root}/fgvc_aircraft/{{images/<id>.jpg, variants.txt, images_variant_{split}.txt}} "
              f"(or the archive's fgvc-aircraft-2013b/data/)")
    cands = [root / d for d in AIRCRAFT_DIRS]
    ds_dir = next((d for d in cands if (d / "variants.txt").is_file()), None)
    if ds_dir is None:
        raise missing_error("FGVC-Aircraft (variants.txt)", cands, layout)
    list_file = ds_dir / f"images_variant_{split}.txt"
    if not list_file.is_file():
        raise missing_error(f"FGVC-Aircraft split {split!r}", [list_file], layout)
    variants = [ln.strip() for ln in (ds_dir / "variants.txt").read_text(encoding="utf-8").splitlines() if ln.strip()]
    label = {v: y for y, v in enumerate(variants)}
    items = []
    for ln in list_file.read_text(encoding="utf-8").splitlines():
        if not ln.strip():
            continue
        image_id, _, variant = ln.strip().partition(" ")
        if variant not in label:
            raise DatasetLayoutError(f"'{list_file}': variant {variant!r} of image {image_id} not in variants.txt")
        items.append((f"images/{image_id}.jpg", label[variant]))
    items = _check_files(ds_dir, items, f"Aircraft ({split})", layout, strict)
    return ClassificationDataset(
        ds_dir, items, _dataset_names(classnames_source, variants, "Aircraft"), transform,
        resolve_templates(templates, AIRCRAFT_TEMPLATE), set_id="Aircraft", split=split)


def _split_json_builder(spec: FewShotSpec) -> Callable[..., ClassificationDataset]:
    def build(root: Path, **kw: Any) -> ClassificationDataset:
        return build_split_json(spec, root, **kw)

    build.__doc__ = f"``{spec.set_id}``: CoOp split JSON {spec.split_file}."
    return build


BUILDERS: dict[str, Callable[..., ClassificationDataset]] = {
    **{k: _split_json_builder(s) for k, s in SPECS.items()}, "Aircraft": build_aircraft,
}
ALIASES: dict[str, str] = {
    **{a: s.set_id for s in SPECS.values() for a in s.aliases},
    **{"fgvc_aircraft": "Aircraft", "fgvcaircraft": "Aircraft", "fgvc-aircraft": "Aircraft"},
}
