"""Classification test sets read from their real on-disk formats, selected by the official TPT/RLCF ids.

ImageNet family here: ``I`` (val), ``A``, ``R``, ``V`` (v2 matched-frequency), ``K`` (Sketch), ``C``
(``C/<corruption>/<severity>``); fine-grained sets in :mod:`tasks.classification.fewshot`. Ids are
case-insensitive and a few aliases work (``imagenet-a``, ``oxford_pets``, TDA's ``S`` for Sketch).

ImageNet labels index the sorted 1000 wnids shipped by timm. A/R labels live in their 200-class space
(sorted wnids of timm's ``imagenet_{a,r}_synsets.txt``); ``dataset.class_indices`` maps each to its
1000-class index. V labels are ``int(folder name)``, never ``ImageFolder``'s string order. Class names
default to CLIP's curated ImageNet names from open_clip; no class list is typed by hand. Example::

    ds = build_dataset("A", "/data")
    image, label, i = ds[0]    # RGB PIL image, int in [0, 200), index; ds.classnames[label], ds.sample_id(i)
"""
from __future__ import annotations

import functools
import importlib.util
import logging
import os
import re
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from tasks.common.data import ImageListDataset, MissingDataError

logger = logging.getLogger(__name__)

__all__ = [
    "ClassificationDataset", "DatasetLayoutError", "IMAGE_EXTENSIONS", "build_dataset", "list_datasets",
    "imagenet_wnids", "imagenet_subset_indices", "resolve_templates", "read_names_file",
]

IMAGE_EXTENSIONS: tuple[str, ...] = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp")
NAME_SOURCES: tuple[str, ...] = ("openai", "json", "dataset", "wordnet")
SINGLE_TEMPLATE = "a photo of a {}."
_WNID = re.compile(r"^n\d{8}$")
Template = str | Callable[[str], str]


class DatasetLayoutError(ValueError):
    """A dataset folder exists but does not have the expected layout (unknown class folders, ...)."""


class ClassificationDataset(ImageListDataset):
    """:class:`ImageListDataset` with the metadata of a classification test set.

    Attributes:
        set_id: canonical dataset id (``"A"``, ``"Pets"``, ``"C/gaussian_noise/5"``, ...).
        class_indices: for ImageNet-family sets, the 1000-class ImageNet index of each label
            (a 200-long mask for A/R, ``range(1000)`` otherwise); ``None`` for other sets.
        wnids: WordNet id of each label for ImageNet-family sets, else ``None``.
        split: split the items come from (``"val"`` for ImageNet sets, ``"test"`` by default otherwise).
    """

    def __init__(self, root: str | Path, items: Sequence[tuple[str, int]], classnames: Sequence[str],
                 transform: Callable | None = None, templates: Sequence[Template] | None = None, *, set_id: str,
                 class_indices: Sequence[int] | None = None, wnids: Sequence[str] | None = None,
                 split: str | None = None) -> None:
        super().__init__(root, items, classnames, transform=transform, templates=templates)
        self.set_id = set_id
        self.class_indices = list(class_indices) if class_indices is not None else None
        self.wnids = list(wnids) if wnids is not None else None
        self.split = split

    def __repr__(self) -> str:
        return (f"{type(self).__name__}(set_id={self.set_id!r}, root='{self.root}', n={len(self)}, "
                f"classes={len(self.classnames)})")


# ----------------------------------------------------------------------------- shared helpers
def is_stray(name: str) -> bool:
    """Hidden entries and archive debris (``.DS_Store``, ``._x.jpg``, ``__MACOSX``) are never data."""
    return name.startswith(".") or name == "__MACOSX"


def list_images(folder: Path) -> list[Path]:
    """Image files under ``folder`` (recursive, symlinks followed), in ``ImageFolder`` order."""
    out: list[Path] = []
    for dirpath, dirnames, filenames in sorted(os.walk(folder, followlinks=True)):
        dirnames[:] = [d for d in dirnames if not is_stray(d)]
        out += [Path(dirpath, f) for f in sorted(filenames)
                if not is_stray(f) and f.lower().endswith(IMAGE_EXTENSIONS)]
    return out


def first_dir(candidates: Sequence[Path]) -> Path | None:
    """The first candidate that is a directory, or ``None``."""
    return next((p for p in candidates if p.is_dir()), None)


def missing_error(what: str, candidates: Sequence[Path], layout: str, extra: str = "") -> MissingDataError:
    """A :class:`MissingDataError` naming every path tried and the expected layout."""
    tried = ", ".join(f"'{p}'" for p in candidates)
    msg = f"{what} not found: tried {tried}. Expected layout: {layout}."
    return MissingDataError(msg + (f" {extra}" if extra else ""))


def read_names_file(path: str | Path) -> list[str] | dict[str, str]:
    """Read class names, one per line; ``"<wnid> <name>"`` lines (CoOp ``classnames.txt``) give a dict."""
    p = Path(path).expanduser()
    if not p.is_file():
        raise MissingDataError(f"class-name file not found at '{p}'. Expected a text file with one class "
                               f"name per line (label order), or '<wnid> <name>' lines, or one of {NAME_SOURCES}.")
    lines = [ln.strip() for ln in p.read_text(encoding="utf-8").splitlines() if ln.strip()]
    pairs = [ln.split(maxsplit=1) for ln in lines]
    if lines and all(len(x) == 2 and _WNID.match(x[0]) for x in pairs):
        return {w: n.strip() for w, n in pairs}
    return lines


def names_from_file(path: str | Path, n: int, keys: Sequence[str] | None = None,
                    full: Sequence[int] | None = None) -> list[str]:
    """Class names for ``n`` labels from a names file (see :func:`read_names_file`).

    ``keys`` (the wnid of each label) serve ``"<wnid> <name>"`` files; with ``full`` (the 1000-class index
    of each label, e.g. the A/R mask) a 1000-line file is restricted to these indices.
    """
    names = read_names_file(path)
    if isinstance(names, dict):
        if keys is None:
            raise ValueError(f"'{path}' has '<wnid> <name>' lines but this dataset has no wnids")
        missing = [k for k in keys if k not in names]
        if missing:
            raise ValueError(f"'{path}' lacks {len(missing)} of the dataset's wnids, e.g. {missing[:3]}")
        return [names[k] for k in keys]
    if len(names) == n:
        return names
    if full is not None and len(names) == 1000:
        return [names[i] for i in full]
    raise ValueError(f"'{path}' has {len(names)} names; expected {n}" + (" or 1000" if full else ""))


def resolve_templates(templates: str | Sequence[Template], dataset_template: str = SINGLE_TEMPLATE) -> list[Template]:
    """Prompt templates from a name or an explicit list.

    ``"single"``: ``["a photo of a {}."]`` (TPT/RLCF); ``"coop"``: the dataset's CoOp sentence
    (e.g. ``"a photo of a {}, a type of pet."``); ``"openai"`` / ``"simple"``: open_clip's 80 / 7 ImageNet
    templates (as format strings); a string containing ``{}`` is a single template; a sequence is used as is.
    """
    if not isinstance(templates, str):
        return list(templates)
    key = templates.lower()
    if key == "single":
        return [SINGLE_TEMPLATE]
    if key == "coop":
        return [dataset_template]
    if key in ("openai", "simple"):
        meta = _open_clip_metadata()
        fns = meta.OPENAI_IMAGENET_TEMPLATES if key == "openai" else meta.SIMPLE_IMAGENET_TEMPLATES
        # open_clip's templates are lambdas (f-strings): turn them into picklable format strings.
        return [t if isinstance(t, str) else t("{}") for t in fns]
    if "{}" in templates:
        return [templates]
    raise ValueError(f"unknown templates {templates!r}: use 'single', 'coop', 'openai', 'simple', "
                     "a format string with '{}', or a list of templates")


# ----------------------------------------------------------------------------- ImageNet metadata (timm)
def _package_dir(package: str) -> Path:
    """Installation folder of ``package``, found without importing it (timm/open_clip imports take ~10 s)."""
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise ModuleNotFoundError(f"package {package!r} is required for the ImageNet class lists")
    return Path(next(iter(spec.submodule_search_locations)))


def _timm_info(name: str) -> list[str]:
    """Non-empty lines of ``timm/data/_info/<name>`` (the synset lists timm ships)."""
    text = (_package_dir("timm") / "data" / "_info" / name).read_text(encoding="utf-8")
    return [ln.strip() for ln in text.splitlines() if ln.strip()]


@functools.cache
def _open_clip_metadata() -> Any:
    """``open_clip.zero_shot_metadata``: CLIP's curated ImageNet class names and templates."""
    import open_clip.zero_shot_metadata as module

    return module


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


# ----------------------------------------------------------------------------- registry
Builder = Callable[..., ClassificationDataset]

_IMAGENET_BUILDERS: dict[str, Builder] = {
    "I": build_imagenet, "A": build_imagenet_a, "V": build_imagenet_v2, "R": build_imagenet_r,
    "K": build_imagenet_sketch, "C": build_imagenet_c,
}
_IMAGENET_ALIASES: dict[str, str] = {
    "imagenet": "I", "imagenet-val": "I", "in": "I", "imagenet-a": "A", "imagenet_a": "A", "imageneta": "A",
    "imagenet-r": "R", "imagenet_r": "R", "imagenetr": "R", "imagenet-v2": "V", "imagenetv2": "V",
    "imagenet_v2": "V", "imagenet-sketch": "K", "imagenet_sketch": "K", "imagenetsketch": "K", "s": "K",
    "imagenet-c": "C", "imagenet_c": "C", "imagenetc": "C",
}


@functools.cache
def _registry() -> tuple[dict[str, Builder], dict[str, str]]:
    """(canonical id -> builder, lower-case alias -> canonical id); fine-grained sets come from ``fewshot``."""
    from tasks.classification import fewshot  # imported late: fewshot builds on this module

    builders = {**_IMAGENET_BUILDERS, **fewshot.BUILDERS}
    aliases = {k.lower(): k for k in builders}
    aliases.update(_IMAGENET_ALIASES)
    aliases.update(fewshot.ALIASES)
    return builders, aliases


def list_datasets() -> list[str]:
    """Canonical dataset ids accepted by :func:`build_dataset` (case-insensitive; aliases also work)."""
    return list(_registry()[0])


def canonical_id(set_id: str) -> tuple[str, list[str]]:
    """``(canonical id, extra path parts)`` of ``set_id``; ``"c/gaussian_noise/5"`` -> ``("C", [...])``."""
    head, *rest = set_id.strip().replace("\\", "/").split("/")
    builders, aliases = _registry()
    key = aliases.get(head.lower())
    if key is None:
        raise KeyError(f"unknown dataset id {set_id!r}; valid ids: {', '.join(builders)} "
                       "(case-insensitive; ImageNet-C as 'C/<corruption>/<severity>')")
    if (rest and key != "C") or len(rest) > 2:
        raise KeyError(f"dataset id {set_id!r}: only ImageNet-C takes '/<corruption>/<severity>'")
    return key, rest


def build_dataset(set_id: str, data_root: str | Path, transform: Callable | None = None,
                  classnames_source: str = "openai", **options: Any) -> ClassificationDataset:
    """Build the test set ``set_id`` from ``data_root``.

    Args:
        set_id: official TPT/RLCF id (``I``, ``A``, ``V``, ``R``, ``K``, ``C/<corruption>/<severity>``,
            ``Caltech101``, ``DTD``, ``eurosat``, ``Flower102``, ``Food101``, ``Pets``, ``Cars``, ``SUN397``,
            ``UCF101``, ``Aircraft``) or an alias, case-insensitive. See :func:`list_datasets`.
        data_root: folder holding the dataset folders (``imagenet-a/``, ``oxford_pets/``, ...).
        transform: callable applied to the RGB ``PIL.Image``.
        classnames_source: ``"openai"`` (default): CLIP's curated names for ImageNet sets, and the
            dataset's own names for the other sets (open_clip ships curated names for ImageNet only);
            ``"json"``: the names stored in the CoOp split JSON (``_`` -> space; ``variants.txt`` for
            Aircraft); ``"wordnet"``: first WordNet lemma (ImageNet sets); or a path to a text file with
            one name per line in label order (ImageNet sets also accept ``"<wnid> <name>"`` lines).
        **options: ``templates`` (``"single"`` default, ``"coop"``, ``"openai"``, ``"simple"`` or a list),
            ``strict`` (default ``True``: missing class folders/images are an error; ``False`` uses
            what is present), ``split`` (fine-grained: ``"test"`` default), ``split_file`` (fine-grained:
            explicit split JSON), ``corruption``/``severity`` (C), ``variant`` (V).

    Raises:
        KeyError: unknown id (the message lists the valid ids).
        MissingDataError: the data is not at ``data_root`` (the message names the paths and layout).
        DatasetLayoutError: the folder holds unknown class folders, or a split file is malformed.
    """
    key, rest = canonical_id(set_id)
    if key == "C" and rest:
        parsed = dict(zip(("corruption", "severity"), rest, strict=False))
        clash = {k for k, v in parsed.items() if k in options and str(options[k]) != v}
        if clash:
            raise ValueError(f"dataset id {set_id!r} disagrees with the options {sorted(clash)}")
        options = {**options, **parsed}
    root = Path(data_root).expanduser()
    if not root.is_dir():
        raise MissingDataError(f"data root not found at '{root}' (building {set_id!r}); point data_root at the "
                               "folder that holds the dataset folders, e.g. <root>/imagenet-a/<wnid>/")
    ds = _registry()[0][key](root, transform=transform, classnames_source=classnames_source, **options)
    logger.info("built %r", ds)
    return ds
