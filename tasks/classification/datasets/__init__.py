"""Classification test sets read from their real on-disk formats, selected by the official TPT/RLCF ids.

* :mod:`.base`: the dataset class, layout errors, file listing, class names and prompt templates;
* :mod:`.imagenet`: ImageNet, -A, -R, -V2, -Sketch, -C;
* :mod:`.fewshot`: the fine-grained sets (CoOp split JSONs, FGVC-Aircraft);
* :mod:`.registry`: :func:`build_dataset` / :func:`list_datasets`, the one registry (dataset providers' splits too).
"""
from .base import (IMAGE_EXTENSIONS, NAME_SOURCES, SINGLE_TEMPLATE, ClassDescriptions, ClassificationDataset,
                   DatasetLayoutError, list_images, read_names_file, resolve_templates)
from .base import _open_clip_metadata  # noqa: F401  (the open_clip metadata module, for tests and tools)
from .imagenet import imagenet_classnames, imagenet_subset_indices, imagenet_wnids
from .custom import InMemoryDataset
from .registry import DatasetIdError, build_dataset, canonical_id, list_datasets

__all__ = ["InMemoryDataset", "ClassDescriptions", "ClassificationDataset", "DatasetLayoutError", "DatasetIdError", "IMAGE_EXTENSIONS", "NAME_SOURCES",
           "SINGLE_TEMPLATE", "build_dataset", "list_datasets", "canonical_id", "imagenet_wnids",
           "imagenet_subset_indices", "imagenet_classnames", "resolve_templates", "read_names_file", "list_images"]
