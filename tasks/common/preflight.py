"""Pre-flight checks shared by every task, before any model is loaded: the weight files a run will read are whole,
and the Python packages it will need are installed.

A weight file gets a cheap look at its structure, never a load:

* a PyTorch zip archive (``torch.save``, OpenAI's TorchScript ``.pt``, ``pytorch_model.bin``): the zip's end record
  and central directory are there (a download cut short loses them), every member lies inside the file, and the
  object pickle (``data.pkl``; ``constants.pkl`` of TorchScript) reads to its end (with its CRC);
* a legacy ``torch.save`` pickle: its pickles read to their ends;
* ``safetensors``: the 8-byte header length, the JSON header, and the file's size against the size the header
  describes; a sharded ``*.index.json``: every shard it lists, probed the same way.

:func:`require_intact` raises one :class:`DamagedFileError` line naming each damaged file, what is wrong with it and
how to get it again; :func:`reading` turns a load that still fails (damage past what the probe sees) into the same
one line where the file is opened. The command lines print it and exit with code 2.
"""
from __future__ import annotations

import importlib.util
import io
import json
import pickle
import pickletools
import re
import zipfile
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Iterator

from .data import UserError

__all__ = ["DamagedFileError", "WeightFile", "probe", "weight_problems", "require_intact", "reading",
           "hf_weight_files", "package_problems", "require_packages", "PACKAGE_HINTS"]


class DamagedFileError(UserError):
    """A weight file that is there but cannot be read whole (truncated, corrupt, or not a weight file)."""


@dataclass(frozen=True)
class WeightFile:
    """A file (or a Hugging Face model folder) a run will read: what it is for, where, and how to get it again."""

    what: str
    path: Path
    hint: str = ""


#: the weight files of a Hugging Face folder, in the order ``from_pretrained`` prefers them
HF_WEIGHTS = ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin", "pytorch_model.bin.index.json")
_TORCH_MAGIC = 0x1950A86A20F9469CFC6C   # the first pickle of a legacy torch.save file
_HTML = re.compile(rb"^\s*(<!doctype|<html|<\?xml|\{\s*\"error)", re.I)


def hf_weight_files(folder: str | Path) -> list[Path]:
    """The weights file ``from_pretrained`` reads in a Hugging Face folder (the first of :data:`HF_WEIGHTS` there),
    or ``[]``."""
    p = Path(folder)
    return next(([p / f] for f in HF_WEIGHTS if (p / f).is_file()), [])


def probe(path: str | Path) -> str | None:
    """What is wrong with the weight file ``path`` (``None`` when its structure is whole; a missing file is not
    probed: ``None``)."""
    p = Path(path)
    if not p.is_file():
        return None
    size = p.stat().st_size
    if size == 0:
        return "the file is empty (0 bytes)"
    with open(p, "rb") as f:
        head = f.read(64)
    if p.name.endswith(".index.json"):
        return _probe_index(p)
    if head[:4] == b"PK\x03\x04" or zipfile.is_zipfile(p):
        return _probe_zip(p, size)
    if p.suffix == ".safetensors" or (len(head) > 8 and head[8:9] == b"{"):
        return _probe_safetensors(p, size)
    if head[:1] == b"\x80" and head[1:2] in (b"\x02", b"\x03", b"\x04", b"\x05"):
        return _probe_pickle(p)
    if head[:2] == b"PK":
        return "truncated or damaged zip archive (no valid zip header)"
    what = "an HTML or JSON page (a failed download?)" if _HTML.match(head) else f"it starts with {head[:12]!r}"
    return f"not a PyTorch or safetensors weight file: {what}"


def _probe_zip(p: Path, size: int) -> str | None:
    try:
        z = zipfile.ZipFile(p)
    except (zipfile.BadZipFile, OSError, ValueError) as e:
        return f"truncated or damaged zip archive ({e}; {size:,} bytes): its end-of-archive record is missing"
    with z, open(p, "rb") as f:
        infos = z.infolist()
        for info in infos:
            end = info.header_offset + 30 + len(info.filename.encode()) + info.compress_size
            if end > size:
                return (f"truncated: member '{info.filename}' ends at byte {end:,} but the file has {size:,} bytes")
        for info in infos:   # every local header where the directory says (a few bytes each)
            f.seek(info.header_offset)
            if f.read(4) != b"PK\x03\x04":
                return f"damaged: no local zip header for member '{info.filename}' at byte {info.header_offset:,}"
        pickles = [i for i in infos if i.filename.endswith(("/data.pkl", "/constants.pkl"))
                   or i.filename in ("data.pkl", "constants.pkl")]
        if not pickles:
            return "a zip archive but not a PyTorch checkpoint (no data.pkl)"
        for info in pickles:
            try:
                data = z.read(info)   # checks the member's CRC
                for _ in pickletools.genops(io.BytesIO(data)):
                    pass
            except Exception as e:  # noqa: BLE001 - any failure here is damage
                return f"damaged: its object record '{info.filename}' does not read ({type(e).__name__}: {e})"
    return None


def _probe_safetensors(p: Path, size: int) -> str | None:
    with open(p, "rb") as f:
        head = f.read(8)
        if len(head) < 8:
            return f"truncated: {size} bytes, shorter than the 8-byte safetensors header length"
        n = int.from_bytes(head, "little")
        if n > size - 8:
            return (f"truncated or damaged: its header length field says {n:,} bytes of metadata, but the file has "
                    f"{size:,} bytes in all")
        try:
            meta = json.loads(f.read(n))
        except (ValueError, UnicodeDecodeError) as e:
            return f"damaged: its safetensors header is not valid JSON ({e})"
    try:
        end = max((int(v["data_offsets"][1]) for k, v in meta.items() if k != "__metadata__"), default=0)
    except (TypeError, KeyError, ValueError, IndexError, AttributeError):
        return "damaged: its safetensors header does not list tensors with data_offsets"
    expected = 8 + n + end
    if size < expected:
        return f"truncated: {size:,} of the {expected:,} bytes its header describes"
    if size > expected:
        return f"damaged: {size - expected:,} bytes more than the {expected:,} its header describes"
    return None


def _probe_index(p: Path) -> str | None:
    try:
        shards = sorted(set(json.loads(p.read_text())["weight_map"].values()))
    except Exception as e:  # noqa: BLE001
        return f"damaged: the shard index does not read ({type(e).__name__}: {e})"
    for shard in shards:
        if not (p.parent / shard).is_file():
            return f"shard '{shard}' listed by the index is missing"
        problem = probe(p.parent / shard)
        if problem:
            return f"shard '{shard}': {problem}"
    return None


def _probe_pickle(p: Path) -> str | None:
    """A legacy ``torch.save`` file is five pickles (magic number, protocol, system info, the object, storage keys)
    followed by the storages' bytes; a plain pickle is one. Each pickle must read to its STOP."""
    with open(p, "rb") as f:
        for i in range(5):
            start = f.tell()
            try:
                for _ in pickletools.genops(f):
                    pass
            except Exception as e:  # noqa: BLE001 - a pickle that does not read to its end
                return f"truncated or damaged pickle ({type(e).__name__}: {e})"
            if i == 0:   # a legacy torch file starts with its magic number; anything else is one plain pickle
                end = f.tell()
                f.seek(start)
                raw = f.read(end - start) if end - start <= 64 else b""
                try:
                    magic = pickle.loads(raw) if raw else None
                except Exception:  # noqa: BLE001
                    magic = None
                if magic != _TORCH_MAGIC:
                    return None
                f.seek(end)
    return None


def weight_problems(files: Iterable[WeightFile]) -> list[str]:
    """One line per damaged file of ``files`` (folders: their weights file); missing files are left to the
    loaders' own messages (they say where to get them)."""
    out = []
    for w in files:
        paths = hf_weight_files(w.path) if Path(w.path).is_dir() else [Path(w.path)]
        for path in paths:
            problem = probe(path)
            if problem:
                out.append(_line(w.what, path, problem, w.hint))
    return out


def _line(what: str, path: Path, problem: str, hint: str) -> str:
    return f"{what} '{path}' is damaged: {problem}." + (f" Get it again: {hint}" if hint else "")


def require_intact(files: Iterable[WeightFile]) -> None:
    """Raise one :class:`DamagedFileError` line naming every damaged file of ``files`` (see :func:`weight_problems`)."""
    found = weight_problems(files)
    if found:
        raise DamagedFileError(" | ".join(found))


_READ_ERROR = re.compile(r"PytorchStreamReader|zip archive|central directory|unexpected EOF|corrupt|truncated|"
                         r"invalid load key|incomplete metadata|MetadataIncompleteBuffer|HeaderTooLarge|"
                         r"deserializ|magic number|Unable to load weights|not a zip file|file is not|"
                         r"failed finding|EOF", re.I)


def _read_error(e: BaseException) -> BaseException | None:
    seen = 0
    while e is not None and seen < 6:
        if isinstance(e, (pickle.UnpicklingError, EOFError, zipfile.BadZipFile, UnicodeDecodeError)):
            return e
        if type(e).__name__ in ("SafetensorError", "HeaderTooLarge") or (
                isinstance(e, (RuntimeError, OSError, ValueError)) and _READ_ERROR.search(str(e))):
            return e
        e, seen = e.__cause__ or e.__context__, seen + 1
    return None


@contextmanager
def reading(path: str | Path, what: str, hint: str = "") -> Iterator[None]:
    """``with reading(path, "reward CLIP checkpoint", hint): load(path)``: an error that says the file could not be
    read (truncated, corrupt, not a weight file) becomes one :class:`DamagedFileError` line naming ``path``."""
    try:
        yield
    except UserError:
        raise
    except Exception as e:
        cause = _read_error(e)
        if cause is None:
            raise
        text = " ".join(str(cause).split())[:200]
        raise DamagedFileError(_line(what, Path(path), f"it could not be read ({type(cause).__name__}: {text})",
                                     hint)) from e


#: how to install what a run needs
PACKAGE_HINTS = {"pycocoevalcap": 'pip install -e ".[caption]"',
                 "transformers": "pip install transformers", "peft": "pip install peft"}


def package_problems(packages: dict[str, str]) -> list[str]:
    """``{module: what needs it}`` -> one line per module that is not installed, with its install command."""
    return [f"the Python package '{name}' is not installed ({why} needs it): {PACKAGE_HINTS.get(name, 'pip install ' + name)}"
            for name, why in packages.items() if importlib.util.find_spec(name) is None]


def require_packages(packages: dict[str, str]) -> None:
    """Raise one :class:`UserError` line naming every package of ``packages`` that is not installed."""
    found = package_problems(packages)
    if found:
        raise UserError(" | ".join(found))
