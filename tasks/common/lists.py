"""List files of your own data: CSV or JSON Lines, one image per row, read with their line numbers.

Rows are ``path, field, field, ...``:

* CSV (``.csv``, or ``.tsv`` with tabs): the first column is the image path, the others are the row's
  values (a label, or one or more captions); a first row whose first cell is ``path``/``image``/
  ``file``/``filename`` is a header and is skipped; blank lines and lines starting with ``#`` are ignored;
* JSON Lines (``.jsonl``): one object per line with ``"path"`` (or ``"image"``) and ``"label"`` /
  ``"caption"`` / ``"captions"`` / ``"references"`` (a string or a list).

Image paths are relative to the list file's folder unless absolute (or ``images_root`` is given). Every
error names the file and the line, and what to do.
"""
from __future__ import annotations

import csv
import json
from dataclasses import dataclass
from pathlib import Path

from .data import MissingDataError, UserError

__all__ = ["ListRow", "ListFileError", "read_list", "LIST_SUFFIXES"]

LIST_SUFFIXES = (".csv", ".tsv", ".jsonl")
_HEADERS = {"path", "image", "file", "filename", "image_path"}


class ListFileError(UserError, ValueError):
    """A malformed row of a list file (the message names the file and the line)."""


@dataclass(frozen=True)
class ListRow:
    """One image of a list file: its path (as written), resolved path, values and line number."""

    path: str
    file: Path
    values: tuple[str, ...]
    line: int


def _resolve(rel: str, base: Path, where: str, check: bool) -> Path:
    p = Path(rel).expanduser()
    p = p if p.is_absolute() else base / p
    if check and not p.is_file():
        raise MissingDataError(f"{where}: image '{rel}' not found (looked at '{p}'); paths are relative to the list "
                               "file's folder unless absolute (or set the images root)")
    return p


def read_list(path: str | Path, images_root: str | Path | None = None, check_files: bool = True,
              min_values: int = 1) -> list[ListRow]:
    """The rows of a CSV / TSV / JSONL list file (see the module docstring).

    Args:
        path: the list file.
        images_root: folder the image paths are relative to (default: the list file's folder).
        check_files: every image must exist (an error names the first missing one and its line).
        min_values: values each row needs besides the path (1: a label or a caption; 0: none, e.g. images
            without references for caption TTA).
    """
    p = Path(path).expanduser()
    if not p.is_file():
        raise MissingDataError(f"list file '{p}' not found: a CSV or JSONL of `path,label` (classification), "
                               "`path,caption[,caption...]` (retrieval) or `path[,reference...]` (caption TTA)")
    if p.suffix.lower() not in LIST_SUFFIXES:
        raise ListFileError(f"list file '{p}': unknown suffix '{p.suffix}'; use one of {LIST_SUFFIXES}")
    base = Path(images_root).expanduser() if images_root is not None else p.parent
    rows: list[ListRow] = []
    with open(p, encoding="utf-8", newline="") as f:
        if p.suffix.lower() == ".jsonl":
            for n, line in enumerate(f, 1):
                if not line.strip() or line.lstrip().startswith("#"):
                    continue
                where = f"{p}:{n}"
                try:
                    obj = json.loads(line)
                except json.JSONDecodeError as e:
                    raise ListFileError(f"{where}: not a JSON object ({e.msg})") from None
                rel = obj.get("path", obj.get("image")) if isinstance(obj, dict) else None
                if not isinstance(rel, str) or not rel:
                    raise ListFileError(f"{where}: each line needs a \"path\" (or \"image\") string")
                raw = next((obj[k] for k in ("label", "caption", "captions", "references") if k in obj), [])
                values = tuple(str(v) for v in (raw if isinstance(raw, list) else [raw]))
                rows.append(ListRow(rel, _resolve(rel, base, where, check_files), values, n))
        else:
            reader = csv.reader(f, delimiter="\t" if p.suffix.lower() == ".tsv" else ",")
            for n, cells in enumerate(reader, 1):
                cells = [c.strip() for c in cells]
                if not cells or not any(cells) or cells[0].startswith("#"):
                    continue
                if not rows and cells[0].lower() in _HEADERS:
                    continue   # a header row
                rel, values = cells[0], tuple(c for c in cells[1:] if c)
                rows.append(ListRow(rel, _resolve(rel, base, f"{p}:{n}", check_files), values, n))
    for r in rows:
        if len(r.values) < min_values:
            raise ListFileError(f"{p}:{r.line}: '{r.path}' has {len(r.values)} value(s), needs at least {min_values}")
    if not rows:
        raise ListFileError(f"list file '{p}' has no rows")
    return rows
