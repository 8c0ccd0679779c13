"""Dataset contract shared by every task.

Every dataset of the toolkit (real benchmarks and the embedded world alike) is a
``torch.utils.data.Dataset`` whose items are plain Python records, so that one runner can
record, resume and shard any of them.

Classification datasets subclass :class:`ImageListDataset`:

* ``__getitem__(i)`` returns ``(image, label, i)`` where ``image`` is the transformed image
  (a ``PIL.Image`` in RGB when ``transform`` is ``None``), ``label`` an ``int`` in
  ``[0, len(classnames))`` and ``i`` the dataset index (the runner's sample id);
* ``classnames`` is the list of class names, index = label;
* ``sample_id(i)`` is a stable string (the file path relative to the root, or a world id)
  that is written to the per-sample records.
"""
from __future__ import annotations

import logging
import os
import random
from pathlib import Path
from typing import Any, Callable, Sequence

from PIL import Image
from torch.utils.data import Dataset

logger = logging.getLogger(__name__)

REPO_ROOT = Path(__file__).resolve().parents[2]


def repo_path(path: str | Path) -> Path:
    """``path``, or, when it is relative and absent here, the same path under the repository root (configs
    name repository files such as ``tasks/world/model_configs/World-Policy-RN.json`` from the root, and
    ``rlcf run ... --config configs/<task>/<name>.yaml`` works from any folder)."""
    p = Path(path).expanduser()
    if not p.exists() and not p.is_absolute() and (REPO_ROOT / p).exists():
        return REPO_ROOT / p
    return p

__all__ = ["ImageListDataset", "MissingDataError", "UserError", "require_path", "hub_download_command",
           "available_cpus", "loader_workers", "probe_samples", "repo_path", "REPO_ROOT"]


class UserError(Exception):
    """An error the user can fix (a missing file, a bad config key or value): the command lines print it
    as one line and exit with code 2 (the traceback only with ``--debug``)."""


class MissingDataError(UserError, FileNotFoundError):
    """A dataset or checkpoint is not where the configuration says it is."""


def hub_download_command(repo: str, path: str | Path) -> str:
    """The download command that exists in the installed ``huggingface_hub``: ``hf download`` (hub >= 0.34,
    where the ``hf`` CLI replaced ``huggingface-cli``, removed in 1.0) or ``huggingface-cli download``."""
    try:
        from importlib.metadata import version

        major, minor = (int(x) for x in version("huggingface_hub").split(".")[:2])
    except Exception:  # noqa: BLE001 - not installed or an odd version string: the current CLI
        major, minor = 1, 0
    cli = "hf" if (major, minor) >= (0, 34) else "huggingface-cli"
    return f"{cli} download {repo} --local-dir {path}"


def available_cpus() -> int:
    """CPU cores this process may run on (``os.sched_getaffinity``; ``os.cpu_count`` where that does not exist)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:   # not on Linux
        return max(1, os.cpu_count() or 1)


def loader_workers(configured: int | None) -> int:
    """DataLoader worker processes to start for ``configured`` (``run.workers``): never more than configured, nor
    than the available cores (more only contend, and PyTorch warns about them); 0 / ``None`` stay 0 (in-process)."""
    configured = int(configured or 0)
    if configured <= 0:
        return 0
    n = min(configured, available_cpus())
    if n < configured:
        logger.debug("%d DataLoader workers instead of %d: %d cores available", n, configured, n)
    return n


def probe_samples(n: int, load: Callable[[int], Any], name: Callable[[int], str], k: int = 4,
                  seed: int = 0) -> list[str]:
    """Pre-flight probe of a dataset of ``n`` samples: load sample 0 and ``k`` random others with the loader's own
    ``load(i)`` (so they resolve and decode exactly as the run will); one line ``"<name(i)>: <error>"`` per failure."""
    if n <= 0:
        return []
    picks = [0] + sorted(random.Random(seed).sample(range(1, n), min(k, n - 1)))
    out = []
    for i in picks:
        try:
            load(i)
        except Exception as e:  # noqa: BLE001 - reported to the user, one line each
            out.append(f"{name(i)}: {e}")
    return out


def require_path(path: str | Path, what: str, hint: str = "") -> Path:
    """Return ``Path(path)`` or raise :class:`MissingDataError` naming ``what`` and ``hint``."""
    p = Path(path).expanduser()
    if not p.exists():
        msg = f"{what} not found at '{p}'."
        if hint:
            msg += f" {hint}"
        raise MissingDataError(msg)
    return p


class ImageListDataset(Dataset):
    """Images given as a list of ``(path, label)`` pairs.

    Args:
        root: folder the paths are relative to (absolute paths are used as they are).
        items: ``(path, label)`` pairs, in the dataset's canonical order.
        classnames: class names, index = label.
        transform: callable applied to the RGB ``PIL.Image`` (e.g. a view generator).
        templates: prompt templates (``str.format`` with one ``{}`` or callables) for zero-shot text.
    """

    def __init__(
        self,
        root: str | Path,
        items: Sequence[tuple[str, int]],
        classnames: Sequence[str],
        transform: Callable | None = None,
        templates: Sequence[str | Callable[[str], str]] | None = None,
    ) -> None:
        self.root = Path(root)
        self.items = [(str(p), int(y)) for p, y in items]
        self.classnames = list(classnames)
        self.transform = transform
        self.templates = list(templates) if templates is not None else ["a photo of a {}."]
        bad = [y for _, y in self.items if not 0 <= y < len(self.classnames)]
        if bad:
            raise ValueError(f"labels {sorted(set(bad))[:5]} out of range for {len(self.classnames)} classes "
                             f"in dataset at '{self.root}'")

    def __len__(self) -> int:
        return len(self.items)

    def path(self, i: int) -> Path:
        p = Path(self.items[i][0])
        return p if p.is_absolute() else self.root / p

    def sample_id(self, i: int) -> str:
        return self.items[i][0]

    def load(self, i: int) -> Image.Image:
        with Image.open(self.path(i)) as im:
            return im.convert("RGB")

    def __getitem__(self, i: int):
        img = self.load(i)
        if self.transform is not None:
            img = self.transform(img)
        return img, self.items[i][1], i
