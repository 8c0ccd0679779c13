"""The one dataset registry: official TPT/RLCF ids, the fine-grained sets, your own data and dataset providers.

ImageNet family (:mod:`.imagenet`): ``I``, ``A``, ``V``, ``R``, ``K``, ``C/<corruption>/<severity>``;
fine-grained sets (:mod:`.fewshot`); a provider's splits as ``<provider>/<split>``
(:mod:`tasks.common.providers`, e.g. the embedded world's ``world/val``). Ids are case-insensitive and a few
aliases work (``imagenet-a``, ``oxford_pets``, TDA's ``S`` for Sketch). Example::

    ds = build_dataset("A", "/data")
    image, label, i = ds[0]    # RGB PIL image, int in [0, 200), index; ds.classnames[label], ds.sample_id(i)
"""
from __future__ import annotations

import functools
import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

from tasks.common.data import MissingDataError, UserError
from tasks.common.providers import get_provider, is_provider, list_providers

logger = logging.getLogger(__name__)

from . import custom, fewshot, imagenet
from .base import ClassificationDataset

__all__ = ["build_dataset", "list_datasets", "canonical_id", "DatasetIdError"]

Builder = Callable[..., ClassificationDataset]


class DatasetIdError(UserError, KeyError):
    """An unknown dataset id (the message lists the valid ones)."""

    def __str__(self) -> str:
        return str(self.args[0]) if self.args else ""


@functools.cache
def _registry() -> tuple[dict[str, Builder], dict[str, str]]:
    """(canonical id -> builder, lower-case alias -> canonical id); fine-grained sets come from ``fewshot``."""
    builders = {**imagenet.BUILDERS, **fewshot.BUILDERS, **custom.BUILDERS}
    aliases = {k.lower(): k for k in builders}
    aliases.update(imagenet.ALIASES)
    aliases.update(fewshot.ALIASES)
    return builders, aliases


def list_datasets() -> list[str]:
    """Canonical dataset ids accepted by :func:`build_dataset` (case-insensitive; aliases also work; a provider
    takes ``<provider>/<split>``)."""
    return list(_registry()[0]) + [p for p in list_providers() if p not in _registry()[0]]


def canonical_id(set_id: str) -> tuple[str, list[str]]:
    """``(canonical id, extra path parts)`` of ``set_id``; ``"c/gaussian_noise/5"`` -> ``("C", [...])``."""
    head, *rest = set_id.strip().replace("\\", "/").split("/")
    builders, aliases = _registry()
    key = aliases.get(head.lower())
    if key is None and is_provider(head.lower()):
        if len(rest) != 1:
            raise DatasetIdError(f"dataset id {set_id!r}: the provider '{head.lower()}' takes one split, e.g. "
                                 f"'{head.lower()}/val'")
        return head.lower(), rest
    if key is None:
        raise DatasetIdError(f"unknown dataset id {set_id!r}; valid ids: {', '.join(list_datasets())} "
                             "(case-insensitive; ImageNet-C as 'C/<corruption>/<severity>', a provider's split as "
                             "'<provider>/<split>', e.g. 'world/val'; your own data: see README 'Bring your own "
                             "model and data')")
    if (rest and key != "C") or len(rest) > 2:
        raise DatasetIdError(f"dataset id {set_id!r}: only ImageNet-C takes '/<corruption>/<severity>'")
    return key, rest


def build_dataset(set_id: str, data_root: str | Path, transform: Callable | None = None,
                  classnames_source: str = "openai", **options: Any) -> ClassificationDataset:
    """Build the test set ``set_id`` from ``data_root``.

    Args:
        set_id: official TPT/RLCF id (``I``, ``A``, ``V``, ``R``, ``K``, ``C/<corruption>/<severity>``,
            ``Caltech101``, ``DTD``, ``eurosat``, ``Flower102``, ``Food101``, ``Pets``, ``Cars``, ``SUN397``,
            ``UCF101``, ``Aircraft``) or an alias, case-insensitive, or a provider's ``<provider>/<split>``
            (``world/val``). See :func:`list_datasets`.
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
    builders = _registry()[0]
    if key == "C" and rest:
        parsed = dict(zip(("corruption", "severity"), rest, strict=False))
        clash = {k for k, v in parsed.items() if k in options and str(options[k]) != v}
        if clash:
            raise ValueError(f"dataset id {set_id!r} disagrees with the options {sorted(clash)}")
        options = {**options, **parsed}
    root = Path(data_root).expanduser()
    if key not in builders:   # a provider's split
        provider = get_provider(key)
        if provider.classification is None:
            raise DatasetIdError(f"dataset id {set_id!r}: the provider '{key}' has no classification sets")
        return provider.classification(rest[0], root, transform=transform)
    if key not in ("list", "folder") and not root.is_dir():
        raise MissingDataError(f"data root not found at '{root}' (building {set_id!r}); point data_root at the "
                               "folder that holds the dataset folders, e.g. <root>/imagenet-a/<wnid>/")
    ds = builders[key](root, transform=transform, classnames_source=classnames_source, **options)
    logger.debug("built %r", ds)
    return ds
