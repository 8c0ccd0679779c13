"""Shared parts of the classification datasets: the dataset class, layout errors, file listing, class-name
files, prompt templates, and the metadata timm / open_clip ship (synset lists, CLIP's names and templates)."""
from __future__ import annotations

import functools
import importlib.util
import json
import logging
import os
import re
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from tasks.common.data import ImageListDataset, MissingDataError, UserError

logger = logging.getLogger(__name__)

__all__ = ["ClassificationDataset", "DatasetLayoutError", "IMAGE_EXTENSIONS", "NAME_SOURCES", "SINGLE_TEMPLATE",
           "Template", "is_stray", "list_images", "first_dir", "missing_error", "read_names_file", "names_from_file",
           "resolve_templates", "ClassDescriptions", "TEMPLATE_NAMES"]

IMAGE_EXTENSIONS: tuple[str, ...] = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp")
NAME_SOURCES: tuple[str, ...] = ("openai", "json", "dataset", "wordnet")
SINGLE_TEMPLATE = "a photo of a {}."
TEMPLATE_NAMES: tuple[str, ...] = ("single", "coop", "openai", "simple")
_WNID = re.compile(r"^n\d{8}$")
Template = str | Callable[[str], str]


class DatasetLayoutError(UserError, ValueError):
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


class ClassDescriptions:
    """Extra class texts (CuPL's GPT-3 prompts, GPT-4 descriptors): a JSON file ``{"class name": ["sentence",
    ...], ...}``, a template entry like the others (``data.templates=[simple, cupl.json]``): a class's text
    features then average its templates' prompts and its sentences
    (:func:`tasks.classification.policies.class_text_features`).

    Keys are class names as the dataset spells them; a key with spaces also serves a name with underscores.
    """

    def __init__(self, path: str | Path) -> None:
        p = Path(path).expanduser()
        if not p.is_file():
            raise MissingDataError(f"class descriptions file not found at '{p}'. Expected a JSON file "
                                   '{"class name": ["a sentence about it", ...], ...} (e.g. CuPL\'s prompts)')
        try:
            data = json.loads(p.read_text(encoding="utf-8"))
        except json.JSONDecodeError as e:
            raise UserError(f"class descriptions file '{p}' is not valid JSON: {e}") from None
        if not isinstance(data, dict) or not all(isinstance(v, list) and v and all(isinstance(x, str) for x in v)
                                                 for v in data.values()):
            raise UserError(f"class descriptions file '{p}' must map each class name to a non-empty list of "
                            "sentences")
        self.path = str(p)
        self.sentences: dict[str, list[str]] = {str(k): list(v) for k, v in data.items()}

    def __repr__(self) -> str:
        return f"ClassDescriptions('{self.path}', {len(self.sentences)} classes)"

    def _key(self, classname: str) -> str | None:
        for k in (classname, classname.replace("_", " ")):
            if k in self.sentences:
                return k
        return None

    def __call__(self, classname: str) -> list[str]:
        """The sentences of ``classname``."""
        key = self._key(classname)
        if key is None:
            self.check([classname])
        return self.sentences[key]

    def check(self, classnames: Sequence[str]) -> None:
        """Every class has sentences, else one error naming the file and the missing classes."""
        missing = [c for c in classnames if self._key(c) is None]
        if missing:
            raise UserError(f"class descriptions file '{self.path}' has no sentences for {len(missing)} of the "
                            f"{len(classnames)} classes, e.g. {missing[:3]}; its keys must be the dataset's class "
                            "names (data.classnames)")


def _is_descriptions_file(entry: str) -> bool:
    return entry.lower().endswith(".json") and "{}" not in entry


def resolve_templates(templates: str | Sequence[Template | ClassDescriptions],
                      dataset_template: str = SINGLE_TEMPLATE) -> list[Template | ClassDescriptions]:
    """Prompt templates from a name or a list.

    ``"single"``: ``["a photo of a {}."]`` (TPT/RLCF); ``"coop"``: the dataset's CoOp sentence
    (e.g. ``"a photo of a {}, a type of pet."``); ``"openai"`` / ``"simple"``: open_clip's 80 / 7 ImageNet
    templates (as format strings); a path ending in ``.json``: a :class:`ClassDescriptions` file (CuPL prompts,
    GPT descriptors); a string containing ``{}`` is a single template. A list may mix all of these (names and
    files are expanded, templates and callables kept as they are), e.g. ``["simple", "cupl_imagenet.json"]``.
    """
    if not isinstance(templates, str):
        out: list[Template | ClassDescriptions] = []
        for t in templates:
            named = isinstance(t, str) and (t.lower() in TEMPLATE_NAMES or _is_descriptions_file(t))
            out += resolve_templates(t, dataset_template) if named else [t]
        return out
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
    if _is_descriptions_file(templates):
        return [ClassDescriptions(templates)]
    if "{}" in templates:
        return [templates]
    raise ValueError(f"unknown templates {templates!r}: use 'single', 'coop', 'openai', 'simple', "
                     "a format string with '{}', a class descriptions file (.json), or a list of these")


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


