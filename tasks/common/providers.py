"""Dataset providers: a source of test sets, named by an id prefix (``world/<split>``), that registers itself.

A provider serves the tasks that read test sets through two optional builders:

* ``classification(split, root, transform)``: a classification dataset (``classnames``, ``__len__``, ``load``,
  ``sample_id``, ``__getitem__``: :class:`tasks.common.data.ImageListDataset`);
* ``retrieval(split, root)``: ``(ids, captions, load)``: the image ids, each image's captions, ``load(i)`` an RGB
  PIL image.

``root`` is the data root (``data.root``); a provider keeps its files in its own folder below it. The provider's
package registers it in its module ``provider`` (``tasks/<name>/provider.py``, :func:`register_provider`), which
:func:`get_provider` imports the first time an id names it: the tasks' data code imports no provider.
"""
from __future__ import annotations

import importlib
import importlib.util
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

__all__ = ["Provider", "register_provider", "get_provider", "is_provider", "list_providers"]

_PROVIDERS: dict[str, "Provider"] = {}
_TASKS = Path(__file__).resolve().parents[1]   # the folder whose packages may hold a provider module


@dataclass(frozen=True)
class Provider:
    """A named source of test sets (see the module docstring); a builder it lacks is ``None``."""

    name: str
    classification: Callable[..., Any] | None = None
    retrieval: Callable[..., tuple[list[str], list[list[str]], Callable[[int], Any]]] | None = None


def register_provider(provider: Provider) -> Provider:
    """Add ``provider`` under its name (``<name>/<split>`` ids reach it)."""
    if _PROVIDERS.get(provider.name, provider) != provider:
        raise KeyError(f"dataset provider '{provider.name}' is already registered")
    _PROVIDERS[provider.name] = provider
    return provider


def _module(name: str) -> str:
    return f"{_TASKS.name}.{name}.provider"


def is_provider(name: str) -> bool:
    """Whether ``name`` is a registered provider or a package with a ``provider`` module."""
    if name in _PROVIDERS:
        return True
    return name.isidentifier() and (_TASKS / name / "provider.py").is_file()


def get_provider(name: str) -> Provider:
    """The provider ``name`` (its package's ``provider`` module is imported on first use)."""
    if name not in _PROVIDERS and is_provider(name):
        importlib.import_module(_module(name))
    if name not in _PROVIDERS:
        raise KeyError(f"no dataset provider '{name}'; providers: {list_providers()}")
    return _PROVIDERS[name]


def list_providers() -> list[str]:
    """Registered providers and the packages that hold one."""
    found = {p.parent.name for p in _TASKS.glob("*/provider.py")}
    return sorted(found | set(_PROVIDERS))
