"""The embedded world as a dataset provider: ``world/<split>`` ids, for classification and for retrieval (each
image with its 5 captions), under ``<data root>/world`` (built on first use; the ``adversarial`` split needs its
filter model: ``python -m tasks.world``)."""
from __future__ import annotations

from pathlib import Path
from typing import Any, Callable

from tasks.common.providers import Provider, register_provider

__all__ = ["WORLD"]


def _classification(split: str, root: str | Path, transform: Callable | None = None) -> Any:
    from .splits import build_world_dataset

    return build_world_dataset(split, root=Path(root) / "world", transform=transform)


def _retrieval(split: str, root: str | Path) -> tuple[list[str], list[list[str]], Callable[[int], Any]]:
    from .splits import build_world_dataset

    ds = build_world_dataset(split, root=Path(root) / "world")
    return [ds.sample_id(i) for i in range(len(ds))], ds.captions, ds.load


WORLD = register_provider(Provider("world", classification=_classification, retrieval=_retrieval))
