"""Progress of a training loop: one tqdm bar over the steps (rank 0 only under ``torchrun``) with the loss, the
learning rate and the ETA, and one log line at a configurable interval, also on the first step of a run.

    with TrainProgress(total=1000, start=step, log_every=100, desc="ClipCap") as progress:
        while step < 1000:
            ...
            step += 1
            if progress.step(step, loss=loss, lr=lr):      # True on the steps that log
                progress.log(logger, step, loss=loss, lr=lr, epoch=epoch)

Log lines go through ``logging`` above the bar (``tqdm.contrib.logging.logging_redirect_tqdm``), so the bar is
not broken by them.
"""
from __future__ import annotations

import logging
import time
from contextlib import ExitStack
from typing import Any

from tqdm.auto import tqdm
from tqdm.contrib.logging import logging_redirect_tqdm

__all__ = ["TrainProgress", "format_seconds", "bar_interval"]


def bar_interval(tty: float = 1.0, log: float = 30.0) -> float:
    """tqdm ``mininterval``: ``tty`` seconds on a terminal, ``log`` when stderr goes to a file or a CI log (where
    every refresh is a new chunk of text)."""
    import sys

    return tty if getattr(sys.stderr, "isatty", lambda: False)() else log


def format_seconds(s: float) -> str:
    """``3725`` -> ``"1:02:05"``, ``65`` -> ``"1:05"``."""
    s = max(0, int(round(s)))
    h, rest = divmod(s, 3600)
    m, sec = divmod(rest, 60)
    return f"{h}:{m:02d}:{sec:02d}" if h else f"{m}:{sec:02d}"


def _fmt(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:.3g}" if abs(v) < 1e-2 and v != 0 else f"{v:.4f}"
    return str(v)


class TrainProgress:
    """A training loop's bar and logging rule (see module docstring).

    Args:
        total: the step the loop ends at.
        start: the step it starts from (``> 0`` after a resume; the ETA counts from here).
        log_every: log every this many steps (and at the first step of the run and the last one).
        desc: the bar's label.
        rank: the process rank (``None``: the process group's, else ``$RANK``, else 0); only rank 0 shows a bar.
    """

    def __init__(self, total: int, start: int = 0, log_every: int = 100, desc: str = "train",
                 rank: int | None = None) -> None:
        if rank is None:
            import os

            import torch.distributed as dist

            rank = (dist.get_rank() if dist.is_available() and dist.is_initialized()
                    else int(os.environ.get("RANK", "0") or 0))   # torchrun sets RANK before any group exists
        self.total, self.start, self.log_every = int(total), int(start), max(1, int(log_every))
        self.rank = rank
        self.t0 = time.time()
        self.bar = tqdm(total=self.total, initial=self.start, desc=desc, unit="step", dynamic_ncols=True,
                        mininterval=bar_interval(1.0), disable=rank != 0)
        self._stack = ExitStack()

    def __enter__(self) -> "TrainProgress":
        self._stack.enter_context(logging_redirect_tqdm())
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def close(self) -> None:
        self.bar.close()
        self._stack.close()

    def should_log(self, step: int) -> bool:
        """The first step of this run, every ``log_every``-th step, and the last one."""
        return step == self.start + 1 or step % self.log_every == 0 or step == self.total

    def eta(self, step: int) -> float:
        """Seconds left at the mean speed of this run's steps so far."""
        done = step - self.start
        return (time.time() - self.t0) / done * (self.total - step) if done > 0 else float("nan")

    def step(self, step: int, **postfix: Any) -> bool:
        """Advance the bar to ``step`` showing ``postfix`` (e.g. ``loss``, ``lr``); whether this step logs."""
        self.bar.set_postfix({k: _fmt(v) for k, v in postfix.items()}, refresh=False)
        self.bar.update(step - self.bar.n)
        return self.should_log(step)

    def log(self, logger: logging.Logger, step: int, **values: Any) -> None:
        """One INFO line (rank 0): ``step 100/14000 (0.7%): loss 2.3100, lr 2e-05, 0.41 s/step, ETA 1:35:02``."""
        if self.rank != 0:
            return
        done = step - self.start
        per_step = (time.time() - self.t0) / done if done > 0 else float("nan")
        parts = ", ".join(f"{k} {_fmt(v)}" for k, v in values.items())
        logger.info("step %d/%d (%.1f%%): %s, %.2f s/step, ETA %s", step, self.total, 100.0 * step / max(1, self.total),
                    parts, per_step, format_seconds(self.eta(step)) if done > 0 else "?")
