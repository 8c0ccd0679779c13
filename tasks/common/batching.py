"""The runner's batched loop: ``run.batch=B`` groups B samples per ``task.process_batch`` call.

Records stay per sample (written as each batch completes, so a killed run loses at most the batch in
progress and a rerun resumes to the same records as an unbatched run); sharding splits samples before
batching. ``run.batch=auto`` picks B from a trial: on CUDA, the first sample runs alone and its peak memory
sets the largest B that fits in ``AUTO_MEMORY_FRACTION`` of the free GPU memory (at most ``AUTO_MAX``); on
CPU, :data:`AUTO_CPU`, which is 1: on CPU batches pay only for tiny models (the README's "Batched episodes"
table, ``benchmarks/bench_methods.py --batch``). An out-of-memory error halves B and
retries the same samples, losing none; any other failure of a batch retries its samples one by one, so
an error stays with the sample that raised it.
"""
from __future__ import annotations

import logging
import resource
import time
import traceback
from typing import Any, Callable, Iterable

import torch

logger = logging.getLogger(__name__)

__all__ = ["process_batched", "process_one", "peak_memory_mb", "auto_batch", "AUTO_MEMORY_FRACTION", "AUTO_MAX", "AUTO_CPU"]

AUTO_MEMORY_FRACTION = 0.8
AUTO_MAX = 64
AUTO_CPU = 1   # see the module docstring: on CPU a batch gains nothing at ViT size


def peak_memory_mb(device: torch.device | None) -> float:
    if device is not None and device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def process_one(task: Any, i: int, sample: Any, err: str | None, device: torch.device | None) -> dict:
    """The record of sample ``i`` (``task.process``, or the error it raised or its loading raised)."""
    t0 = time.perf_counter()
    rec: dict[str, Any] = {"index": i, "id": task.sample_id(i)}
    if err is None:
        try:
            rec.update(task.process(i, sample))
        except Exception as e:  # noqa: BLE001 - recorded, the run goes on
            err = f"{type(e).__name__}: {e}"
            logger.debug("sample %d failed:\n%s", i, traceback.format_exc())
    if err is not None:
        rec["error"] = err
        logger.warning("sample %d (%s): %s", i, rec["id"], err)
    rec["time"] = time.perf_counter() - t0
    rec["peak_mem_mb"] = round(peak_memory_mb(device), 1)
    return rec


def _is_oom(e: BaseException) -> bool:
    return isinstance(e, torch.OutOfMemoryError) or "out of memory" in str(e).lower()


def auto_batch(per_sample_bytes: float, device: torch.device | None, fraction: float = AUTO_MEMORY_FRACTION,
               cap: int = AUTO_MAX) -> int:
    """The largest B whose ``B * per_sample_bytes`` fits in ``fraction`` of the free memory of ``device``."""
    if device is None or device.type != "cuda":
        return AUTO_CPU
    free, _ = torch.cuda.mem_get_info(device)
    return int(max(1, min(cap, (fraction * free) // max(per_sample_bytes, 1.0))))


def process_batched(task: Any, stream: Iterable[tuple[int, Any, str | None]], batch: int | str,
                    write: Callable[[dict], None], device: torch.device | None,
                    peak_mb: Callable[[], float]) -> None:
    """Consume ``stream`` (``(index, sample, load error)``), writing one record per sample."""
    if not hasattr(task, "process_batch"):
        raise TypeError(f"{type(task).__name__} has no process_batch: use run.batch=1")
    if batch != "auto" and (not isinstance(batch, int) or batch < 1):
        raise ValueError(f"run.batch must be a positive integer or 'auto', got {batch!r}")
    size = batch if isinstance(batch, int) else None
    pending: list[tuple[int, Any]] = []

    def flush(items: list[tuple[int, Any]]) -> None:
        nonlocal size
        while items:
            chunk, items = items[:size], items[size:]
            t0 = time.perf_counter()
            oom = False
            try:
                recs = task.process_batch([i for i, _ in chunk], [s for _, s in chunk])
            except Exception as e:  # noqa: BLE001 - OOM halves the batch; anything else: one by one
                if not (_is_oom(e) and size > 1):
                    logger.warning("a batch of %d failed (%s: %s): processing its samples one by one", len(chunk),
                                   type(e).__name__, e)
                    for i, s in chunk:
                        write(process_one(task, i, s, None, device))
                    continue
                size = max(1, size // 2)
                logger.warning("out of memory with run.batch=%d: retrying with %d", len(chunk), size)
                items, oom = chunk + items, True
            if oom:   # out of the except block, whose traceback holds the failed batch's tensors
                if device is not None and device.type == "cuda":
                    torch.cuda.empty_cache()
                continue
            dt = (time.perf_counter() - t0) / len(chunk)
            for (i, _), rec in zip(chunk, recs):
                write({"index": i, "id": task.sample_id(i), **rec, "time": dt, "peak_mem_mb": peak_mb()})

    for i, sample, err in stream:
        if err is not None:
            write(process_one(task, i, sample, err, device))
            continue
        if size is None:   # auto: the first sample alone measures the cost of one
            base = torch.cuda.max_memory_allocated(device) if device is not None and device.type == "cuda" else 0
            if device is not None and device.type == "cuda":
                torch.cuda.reset_peak_memory_stats(device)
                base = torch.cuda.memory_allocated(device)
            write(process_one(task, i, sample, None, device))
            per = (torch.cuda.max_memory_allocated(device) - base) if device is not None and device.type == "cuda" else 0
            size = auto_batch(per, device)
            logger.info("run.batch=auto: %d samples at once (%s)", size,
                        f"{per / 2**20:.0f} MB per sample, {AUTO_MEMORY_FRACTION:.0%} of free GPU memory"
                        if device is not None and device.type == "cuda" else "CPU default")
            continue
        pending.append((i, sample))
        if len(pending) >= size:
            flush(pending)
            pending = []
    flush(pending)
