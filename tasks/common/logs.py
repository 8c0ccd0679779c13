"""Say each thing once: messages that would repeat within a run (a metric skipped for every evaluation, a fallback
taken for every call) are logged the first time only. :func:`tasks.common.cli.setup_logging` starts a new run's
record, so every command line says them once.
"""
from __future__ import annotations

import logging
import threading
from typing import Any

__all__ = ["log_once", "reset_once"]

_SAID: set[tuple[str, int, str]] = set()
_LOCK = threading.Lock()


def log_once(logger: logging.Logger, level: int, msg: str, *args: Any) -> bool:
    """``logger.log(level, msg, *args)`` unless the same logger already logged the same text at that level in this
    run; returns whether it logged."""
    key = (logger.name, level, msg % args if args else msg)
    with _LOCK:
        if key in _SAID:
            return False
        _SAID.add(key)
    logger.log(level, msg, *args)
    return True


def reset_once() -> None:
    """Forget what was said (a new run starts)."""
    with _LOCK:
        _SAID.clear()
