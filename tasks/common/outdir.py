"""Output folders that never lie: a folder holds the results of one configuration.

A run's folder keeps a fingerprint of what determines its results (``fingerprint.json``: the config without its
bookkeeping keys, and the weights' hashes). Before anything is written there, and before any model is loaded,
:func:`check_folder` compares the new run's fingerprint with it:

* no fingerprint yet, or the same one: the run is accepted (a rerun resumes);
* another one: the run is refused in one line (:class:`FolderInUseError`) naming the keys that differ and the two
  ways on, another output folder or a restart; nothing in the folder is touched;
* another one with ``restart``: :func:`move_aside` moves the folder's results into a dated sub-folder
  ``old-<YYYYmmdd-HHMMSS>/`` (never deleting them) and the run starts afresh.

Every command line with an output folder uses it: classification, retrieval, caption TTA (through
:mod:`tasks.common.cli`), captioner training and ``rlcf train-clip``; the main job restarts its own cells
(``on_change="restart"`` of :func:`tasks.common.runner.run`), moving their old records aside the same way.
"""
from __future__ import annotations

import json
import logging
import time
from pathlib import Path
from typing import Any, Iterable, Sequence

from .data import UserError

logger = logging.getLogger(__name__)

__all__ = ["FolderInUseError", "changed_keys", "check_folder", "move_aside", "claim", "RESULT_FILES", "flat"]

#: what a runner folder holds (moved aside on a restart)
RESULT_FILES = ("records-*.jsonl", "fingerprint.json", "config.yaml", "summary.json", "summary.md", "captions.json",
                "clipscore_candidates.json", "results.md", "results.json")


class FolderInUseError(UserError, RuntimeError):
    """An output folder holds results of another configuration (one line: the differing keys and the ways on)."""


def flat(d: Any, prefix: str = "") -> dict[str, Any]:
    """``{"a": {"b": 1}}`` -> ``{"a.b": 1}``."""
    if not isinstance(d, dict):
        return {prefix: d}
    out: dict[str, Any] = {}
    for k, v in d.items():
        out.update(flat(v, f"{prefix}.{k}" if prefix else str(k)))
    return out


def changed_keys(old: dict, new: dict) -> list[str]:
    """The dotted keys whose values differ between two nested fingerprints (sorted)."""
    a, b = flat(json.loads(json.dumps(old, sort_keys=True, default=str))), \
        flat(json.loads(json.dumps(new, sort_keys=True, default=str)))
    return sorted(k for k in a.keys() | b.keys() if a.get(k) != b.get(k))


def check_folder(out: str | Path, fingerprint: dict, *, restart: bool = False, file: str = "fingerprint.json",
                 new_folder: str = "run.out_dir=<another folder>", restart_option: str = "run.restart=true",
                 what: str = "results") -> list[str]:
    """Whether a run of ``fingerprint`` may write into ``out``; returns the keys that differ from the results there
    (``[]``: nothing there yet, or the same configuration; a rerun resumes). Reads only.

    Raises:
        FolderInUseError: the folder holds results of another configuration and ``restart`` is off (the message
            names the differing keys, ``new_folder`` and ``restart_option``).
    """
    path = Path(out) / file
    if not path.is_file():
        return []
    try:
        old = json.loads(path.read_text())
    except ValueError:
        old = {"?": "unreadable"}
    changed = changed_keys(old, fingerprint)
    if changed and not restart:
        raise FolderInUseError(
            f"{out} holds {what} made with another configuration (differs in: {', '.join(changed[:8])}"
            f"{', ...' if len(changed) > 8 else ''}); nothing there was changed. Choose another output folder "
            f"({new_folder}), or pass {restart_option} to move the old {what} aside into {Path(out) / 'old-<date>'}/ "
            "(nothing is deleted) and start afresh")
    return changed


def move_aside(out: str | Path, patterns: Sequence[str] = RESULT_FILES, why: Iterable[str] = ()) -> Path | None:
    """Move the files of ``out`` matching ``patterns`` into ``out/old-<YYYYmmdd-HHMMSS>/`` (a new folder each time);
    returns it (``None`` when there was nothing to move)."""
    out = Path(out)
    files = sorted({p for pattern in patterns for p in out.glob(pattern) if p.is_file()})
    if not files:
        return None
    stamp = time.strftime("%Y%m%d-%H%M%S")
    dest, n = out / f"old-{stamp}", 1
    while dest.exists():
        n += 1
        dest = out / f"old-{stamp}-{n}"
    dest.mkdir(parents=True)
    for f in files:
        f.rename(dest / f.name)
    changed = list(why)
    logger.warning("%s: configuration changed%s: its earlier results were moved to %s; starting afresh", out,
                   f" ({', '.join(changed[:8])})" if changed else "", dest)
    return dest


def claim(out: str | Path, fingerprint: dict, *, restart: bool = False, file: str = "fingerprint.json",
          patterns: Sequence[str] = ("*",), new_folder: str = "--out-dir <another folder>",
          restart_option: str = "--restart", what: str = "results") -> Path | None:
    """:func:`check_folder`, then (``restart``) :func:`move_aside` of the files matching ``patterns``, then write the
    fingerprint: the folder is this run's. Returns where old results went (``None``: nowhere, nothing moved)."""
    out = Path(out)
    changed = check_folder(out, fingerprint, restart=restart, file=file, new_folder=new_folder,
                           restart_option=restart_option, what=what)
    moved = move_aside(out, patterns, why=changed) if changed else None
    out.mkdir(parents=True, exist_ok=True)
    (out / file).write_text(json.dumps(json.loads(json.dumps(fingerprint, sort_keys=True, default=str)), indent=1,
                                       sort_keys=True))
    return moved
