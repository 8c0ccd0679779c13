"""Every adaptation method beyond the core's: one module per method, each registering itself.

A module of this folder defines a :class:`rlcf.Method` subclass and registers it with
:func:`rlcf.register_method`; :func:`load_all` imports every module of the folder, so a new method is one new
file here (``docs/extending.md``). Every command line (``rlcf run``, ``rlcf methods``, ``python -m
tasks.<task>.run``) calls :func:`load_all` first; importing a task package registers nothing. The core methods
(``zeroshot``, ``tpt``, ``rlcf``) are registered by :mod:`rlcf.methods` itself.
"""
from __future__ import annotations

import importlib
import pkgutil

import rlcf

__all__ = ["load_all", "modules"]


def modules() -> list[str]:
    """The method modules of this folder, by name."""
    return sorted(m.name for m in pkgutil.iter_modules(__path__) if not m.name.startswith("_"))


def load_all() -> list[str]:
    """Import every method module (idempotent); returns every registered method name."""
    for name in modules():
        importlib.import_module(f"{__name__}.{name}")
    return rlcf.list_methods()
