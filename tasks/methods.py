"""Every adaptation method of the toolkit, in one place.

The core methods (``zeroshot``, ``tpt``, ``rlcf``) are registered by :mod:`rlcf.methods` itself; the
peers (``ctpt``, ``zero``, ``tda``, ``kd``, in :mod:`tasks.classification.peers`) are registered here,
explicitly, by :func:`register_all`, which every command line and task builder calls. Importing a task
package registers nothing.
"""
from __future__ import annotations

import rlcf
from rlcf.engine import Method
from rlcf.methods import RLCF, TPT, ZeroShot

from .classification.peers import CTPT, KD, TDA, Zero

__all__ = ["CORE", "PEERS", "ALL", "register_all"]

CORE: dict[str, type[Method]] = {"zeroshot": ZeroShot, "tpt": TPT, "rlcf": RLCF}
PEERS: dict[str, type[Method]] = {"ctpt": CTPT, "zero": Zero, "tda": TDA, "kd": KD}
ALL: dict[str, type[Method]] = {**CORE, **PEERS}


def register_all() -> list[str]:
    """Register the peer methods in the core registry (idempotent); returns every registered name."""
    for name, cls in PEERS.items():
        if name not in rlcf.list_methods():
            rlcf.register_method(name)(cls)
    return rlcf.list_methods()
