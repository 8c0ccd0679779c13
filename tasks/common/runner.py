"""The runner every task uses: resumable, shardable, per-sample records.

A *task* provides::

    len(task)                       # number of samples
    task.sample_id(i) -> str        # stable id written to the records (file path, world id, ...)
    task.load(i) -> sample          # runs in DataLoader workers (decoding, views); picklable
    task.process(i, sample) -> dict # adaptation + prediction; JSON-serialisable record fields
    task.summarize(records) -> dict # metrics over the records, in dataset order
    task.online: bool               # True when state is carried across samples (stream order matters)

Records go to ``<out_dir>/records-<rank>.jsonl``, one JSON line per sample, appended and flushed
as soon as a sample is done. Killed at any moment, a rerun reads every ``records-*.jsonl`` in the
folder, drops a truncated last line, skips the samples already recorded and continues; the merged
result equals an uninterrupted run. An online task (state carried across samples) replays the
recorded samples in stream order to rebuild its state, without writing them again. An error record (a sample
that could not be loaded or processed) is tried again by a rerun unless ``keep_errors``. Under ``torchrun`` each
rank takes the disjoint shard ``order[rank::world_size]``; rank 0 merges once every rank is done.

A ``fingerprint`` (what determines a record: the config without its bookkeeping keys, see
:func:`result_fingerprint`) is kept in ``<out_dir>/fingerprint.json``: records made under another
one are never mixed in (a one-line :class:`tasks.common.outdir.FolderInUseError` naming the differing keys, or,
with ``on_change="restart"``, the old records moved aside into ``<out_dir>/old-<date>/`` and a fresh start).
"""
from __future__ import annotations

import json
import logging
import os
import sys
import random
from pathlib import Path
from typing import Any, Iterator, Protocol, Sequence

import torch
from torch.utils.data import DataLoader, Dataset
from tqdm import tqdm
from tqdm.contrib.logging import logging_redirect_tqdm

from .progress import bar_interval
from .batching import peak_memory_mb as _peak_memory_mb
from .batching import process_batched, process_one
from .data import loader_workers

logger = logging.getLogger(__name__)

__all__ = ["Task", "run", "read_records", "dist_info", "sample_order", "init_distributed", "barrier", "result_fingerprint",
           "stratified", "subset_description"]


class Task(Protocol):
    online: bool

    def __len__(self) -> int: ...

    def sample_id(self, i: int) -> str: ...

    def load(self, i: int) -> Any: ...

    def process(self, i: int, sample: Any) -> dict: ...

    # optional: def process_batch(self, indices: list[int], samples: list) -> list[dict] (run.batch > 1)

    def summarize(self, records: list[dict]) -> dict: ...


def dist_info() -> tuple[int, int]:
    """``(rank, world_size)`` from ``torch.distributed`` or torchrun's environment."""
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed.get_rank(), torch.distributed.get_world_size()
    return int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1))


def init_distributed() -> None:
    """Join the process group torchrun describes (gloo on CPU, nccl on GPU); no-op on one process."""
    if int(os.environ.get("WORLD_SIZE", 1)) > 1 and not torch.distributed.is_initialized():
        backend = "nccl" if torch.cuda.is_available() else "gloo"
        torch.distributed.init_process_group(backend)
        if torch.cuda.is_available():
            torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", 0)))


RUN_BOOKKEEPING = ("out_dir", "workers", "limit", "device", "allow_online_sharding", "save_logits", "batch", "restart",
                   "keep_errors", "allow_errors")


def result_fingerprint(cfg: dict) -> dict:
    """``cfg`` without what does not change a sample's record (output path, workers, limit, data location, ...)."""
    run_cfg = {k: v for k, v in cfg.get("run", {}).items() if k not in RUN_BOOKKEEPING}
    out = {**cfg, "run": run_cfg}
    if isinstance(cfg.get("data"), dict):
        out["data"] = {k: v for k, v in cfg["data"].items() if k != "root"}
    return json.loads(json.dumps(out, sort_keys=True, default=str))


def _check_fingerprint(out: Path, fingerprint: dict, on_change: str) -> None:
    """Compare with ``<out>/fingerprint.json`` (rank 0 only); resume, move the old records aside
    (``on_change="restart"``) or refuse (:class:`tasks.common.outdir.FolderInUseError`); write it."""
    from .outdir import check_folder, move_aside

    path = out / "fingerprint.json"
    fp = json.loads(json.dumps(fingerprint, sort_keys=True, default=str))
    if not path.is_file() and any(out.glob("records-*.jsonl")):   # records from before fingerprints
        if on_change == "restart":
            move_aside(out, why=["unknown (no fingerprint.json)"])
        else:
            logger.warning("%s has records but no fingerprint.json (an older version): resuming them as they are", out)
    else:
        changed = check_folder(out, fp, restart=on_change == "restart")
        if changed:
            move_aside(out, why=changed)
    path.write_text(json.dumps(fp, indent=1, sort_keys=True))


def barrier() -> None:
    """``torch.distributed.barrier()`` when a process group is initialised; no-op on one process."""
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        torch.distributed.barrier()


SHUFFLES = ("python", "torch_loader")


def loader_permutation(n: int, seed: int) -> list[int]:
    """The order in which ``DataLoader(dataset, batch_size=1, shuffle=True)`` yields ``n`` samples when
    its iterator is the first thing to draw from torch's RNG after ``torch.manual_seed(seed)``.

    The iterator draws its workers' base seed, then ``RandomSampler`` draws the seed of its own
    generator and returns ``randperm(n)`` from it (torch 1.13 and 2.x alike). This is the stream the
    official online methods read (RLCF-S-M: seed 0; TDA: seed 1). Their exact permutation also depends
    on whatever drew from the RNG between their seeding and the loop (model construction), which no
    re-implementation can replay, so this is "a shuffled stream with the official seed", not the same one.
    """
    g = torch.Generator().manual_seed(int(seed))
    torch.empty((), dtype=torch.int64).random_(generator=g)   # the DataLoader iterator's base seed
    sampler_seed = int(torch.empty((), dtype=torch.int64).random_(generator=g).item())
    return torch.randperm(n, generator=torch.Generator().manual_seed(sampler_seed)).tolist()


def sample_order(n: int, limit: int | None = None, shuffle_seed: int | None = None,
                 shuffle: str = "python", strata: Sequence[Any] | None = None) -> list[int]:
    """Dataset indices in processing order: sequential, or a seeded shuffle; ``limit`` of them.

    Args:
        shuffle: with a ``shuffle_seed``: ``"python"`` (``random.Random(seed).shuffle``) or
            ``"torch_loader"`` (:func:`loader_permutation`, the official online methods' stream).
        strata: the class of every sample (``n`` values); with a ``limit`` and no ``shuffle_seed``, the
            ``limit`` samples are a class-stratified subset (the first sample of every class in dataset order,
            then the second of every class, ...), processed in dataset order. Without strata a ``limit`` takes
            the first ``limit`` samples of the order (a seeded order: a seeded random subset).
    """
    if shuffle not in SHUFFLES:
        raise ValueError(f"shuffle must be one of {SHUFFLES}, got '{shuffle}'")
    order = list(range(n))
    if shuffle_seed is not None:
        if shuffle == "torch_loader":
            order = loader_permutation(n, shuffle_seed)
        else:
            random.Random(shuffle_seed).shuffle(order)
    if limit is None:
        return order
    if strata is not None and shuffle_seed is None:
        return sorted(stratified(strata, limit))
    return order[:limit]


def stratified(strata: Sequence[Any], limit: int) -> list[int]:
    """``limit`` indices taking the classes of ``strata`` in turn (round robin in order of first appearance; within a
    class in dataset order): every class is covered once ``limit`` reaches the number of classes, and a larger
    ``limit`` keeps every index a smaller one took (a rerun with a larger limit resumes)."""
    by_class: dict[Any, list[int]] = {}
    for i, c in enumerate(strata):
        by_class.setdefault(c, []).append(i)
    out: list[int] = []
    rank = 0
    while len(out) < min(limit, len(strata)):
        for members in by_class.values():
            if rank < len(members) and len(out) < limit:
                out.append(members[rank])
        rank += 1
    return out


def subset_description(n: int, limit: int | None, shuffle_seed: int | None, stratified_by: int | None,
                       online: bool) -> str:
    """What ``run.limit`` took, in words (logged and kept in the summary)."""
    if limit is None or limit >= n:
        return f"all {n} samples"
    if shuffle_seed is not None:
        return f"a seeded random subset of {limit} of {n} samples (run.shuffle_seed={shuffle_seed})"
    if stratified_by:
        return f"a class-stratified subset of {limit} of {n} samples ({stratified_by} classes, taken in turn)"
    what = "the stream" if online else "the dataset"
    return f"the first {limit} of {n} samples of {what} (set run.shuffle_seed for a seeded random subset)"


def _repair(path: Path) -> None:
    """Cut a partially written last line (the process was killed mid-write)."""
    if not path.exists() or path.stat().st_size == 0:
        return
    data = path.read_bytes()
    if not data.endswith(b"\n"):
        path.write_bytes(data[: data.rfind(b"\n") + 1])
        logger.warning("dropped a truncated last record in %s", path)


def read_records(out_dir: str | Path) -> dict[int, dict]:
    """Every complete record in ``out_dir/records-*.jsonl``, by sample index: the first one, unless it is an error
    record and a later one (a retry) follows."""
    found: dict[int, dict] = {}
    for path in sorted(Path(out_dir).glob("records-*.jsonl")):
        with open(path, encoding="utf-8") as f:
            for line in f:
                if not line.endswith("\n"):
                    break  # truncated tail, repaired before the next append
                rec = json.loads(line)
                i = int(rec["index"])
                if i not in found or "error" in found[i]:   # a retried error record: the later record wins
                    found[i] = rec
    return found


class _Loading(Dataset):
    """Wraps ``task.load`` so that an unreadable sample becomes an error record, not a crash."""

    def __init__(self, task: Task, indices: Sequence[int]) -> None:
        self.task, self.indices = task, list(indices)

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, j: int) -> tuple[int, Any, str | None]:
        i = self.indices[j]
        try:
            return i, self.task.load(i), None
        except Exception as e:  # noqa: BLE001 - recorded per sample, the run goes on
            return i, None, f"{type(e).__name__}: {e}"


def _identity(x: Any) -> Any:
    return x


def _iterate(task: Task, indices: Sequence[int], workers: int) -> Iterator[tuple[int, Any, str | None]]:
    ds = _Loading(task, indices)
    workers = loader_workers(workers)   # never more processes than cores
    if workers <= 0:
        yield from (ds[j] for j in range(len(ds)))
        return
    loader = DataLoader(ds, batch_size=None, shuffle=False, num_workers=workers, collate_fn=_identity,
                        persistent_workers=False, prefetch_factor=2)
    yield from loader


def run(task: Task, out_dir: str | Path, workers: int = 0, limit: int | None = None,
        shuffle_seed: int | None = None, allow_online_sharding: bool = False, shuffle: str = "python",
        device: torch.device | None = None, desc: str = "samples", meta: dict | None = None,
        shard: bool = True, fingerprint: dict | None = None, on_change: str = "error",
        batch: int | str | None = None, leave: bool = True, keep_errors: bool = False) -> dict | None:
    """Process every pending sample of ``task`` and return the summary (rank 0; ``None`` elsewhere).

    Args:
        task: the task (see module docstring).
        out_dir: folder of the records, ``summary.json`` and ``summary.md``.
        workers: DataLoader workers for ``task.load`` (0 = in-process; at most the available cores,
            :func:`tasks.common.data.loader_workers`).
        limit: process only ``limit`` samples: a class-stratified subset when the task gives its samples'
            classes (``task.strata()``, episodic tasks without ``shuffle_seed``), else the first ``limit`` of the
            order (:func:`sample_order`); the summary's ``subset`` says which.
        shuffle_seed: process in a seeded random order (recorded in the summary), else dataset order.
        shuffle: how ``shuffle_seed`` shuffles (:func:`sample_order`). An online method's result
            depends on the stream order: the official TDA / -M runs read a shuffled stream.
        allow_online_sharding: let an online task run sharded (each shard then has its own state).
        device: for peak-memory accounting on CUDA.
        shard: ``False``: this process takes the whole order whatever its rank, with no barrier (the
            caller runs it on one rank only, e.g. an online method inside a torchrun job).
        fingerprint: what determines a record (e.g. :func:`result_fingerprint` of the config);
            ``None``: not checked.
        on_change: when ``out_dir`` holds records of another fingerprint: ``"error"`` or ``"restart"``.
        meta: extra fields written to the summary (config, method, ...).
        batch: samples adapted at once (``task.process_batch``), an int or ``"auto"``
            (:mod:`tasks.common.batching`); ``None`` / 1: one at a time. Records, resume and sharding stay
            per sample, and the records equal an unbatched run's.
        leave: keep the finished progress bar on the console (``False``: the main job, one bar per stage).
        keep_errors: keep the error records of an earlier run as they are; by default their samples are tried
            again (a retry that fails the same way leaves the record as it was).
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    rank, world = dist_info() if shard else (0, 1)
    if world > 1 and getattr(task, "online", False) and not allow_online_sharding:
        raise RuntimeError("this method is online (state carried across the stream): sharding would change "
                           "its results. Run it on one process, or set allow_online_sharding to accept "
                           "one independent stream per shard")
    if fingerprint is not None:
        if rank == 0:
            _check_fingerprint(out, fingerprint, on_change)
        if world > 1:
            barrier()
    online = bool(getattr(task, "online", False))
    strata = task.strata() if limit is not None and not online and hasattr(task, "strata") else None
    order = sample_order(len(task), limit, shuffle_seed, shuffle, strata)
    subset = subset_description(len(task), limit, shuffle_seed, len(set(strata)) if strata is not None else None,
                                online)
    if limit is not None and rank == 0:
        logger.info("run.limit=%d: %s", limit, subset)
    done = read_records(out)
    retry = set() if keep_errors else {i for i in order if i in done and "error" in done[i]}
    settled = {i for i in done if i not in retry}
    # an online task's state depends on every earlier sample: recorded ones are replayed, not re-written
    shard = [i for i in order[rank::world] if online or i not in settled]
    if online and all(i in settled for i in shard):
        shard = []
    n_done = sum(i in settled for i in order[rank::world])
    n_retry = sum(i in retry for i in order[rank::world])
    (logger.info if (n_done or n_retry) and rank == 0 else logger.debug)(
        "rank %d/%d: %d samples in shard, %d already recorded%s", rank, world, len(order[rank::world]), n_done,
        f", {n_retry} error records tried again (run.keep_errors=true keeps them)" if n_retry else "")
    path = out / f"records-{rank}.jsonl"
    _repair(path)
    if device is not None and device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    if batch not in (None, 1) and online:
        raise RuntimeError("this method is online (state carried across the stream): its stream order is the "
                           "method, so it cannot adapt samples in batches; use run.batch=1")
    with open(path, "a", encoding="utf-8") as f, logging_redirect_tqdm():
        def write(rec: dict) -> None:
            old = done.get(rec["index"]) if rec["index"] in retry else None
            if old is not None and rec.get("error") == old.get("error"):
                return   # a retry that failed the same way: the record stays as it was
            f.write(json.dumps(rec) + "\n")
            f.flush()

        # a transient bar (leave=False: one of many cells, each summarised by a log line) is drawn on a terminal
        # only: in a log file it would leave a block of empty lines per cell
        transient_in_log = not leave and not getattr(sys.stderr, "isatty", lambda: False)()
        bar = tqdm(_iterate(task, shard, workers), total=len(shard), desc=desc, dynamic_ncols=True,
                   disable=rank != 0 or transient_in_log, leave=leave, mininterval=bar_interval(0.1))
        if batch not in (None, 1):
            process_batched(task, bar, batch, write, device, lambda: round(_peak_memory_mb(device), 1))
        else:
            for i, sample, err in bar:
                if i in settled:   # online replay
                    if err is None:
                        task.process(i, sample)
                    continue
                write(process_one(task, i, sample, err, device))
    if world > 1:
        barrier()
    if rank != 0:
        return None
    return merge(task, out, order, meta=dict(meta or {}, world_size=world, shuffle_seed=shuffle_seed,
                                                 shuffle=shuffle if shuffle_seed is not None else None, subset=subset))


def merge(task: Task, out_dir: str | Path, order: Sequence[int], meta: dict | None = None) -> dict:
    """Summarise the recorded samples of ``order`` (in dataset order) to summary.json / .md."""
    out = Path(out_dir)
    found = read_records(out)
    missing = [i for i in order if i not in found]
    if missing:
        raise RuntimeError(f"{len(missing)} samples are not recorded in {out} yet (e.g. {missing[:5]}): "
                           "rerun the same command to finish them")
    records = [found[i] for i in sorted(order)]
    ok = [r for r in records if "error" not in r]
    summary = {"n": len(records), "errors": len(records) - len(ok), **(meta or {})}
    summary["metrics"] = task.summarize(ok) if ok else {}
    times = sorted(r["time"] for r in records)
    summary["time_per_sample_median"] = times[len(times) // 2] if times else None
    summary["peak_mem_mb"] = max((r.get("peak_mem_mb", 0.0) for r in records), default=0.0)
    (out / "summary.json").write_text(json.dumps(summary, indent=2))
    (out / "summary.md").write_text(_markdown(summary))
    return summary


def _markdown(summary: dict) -> str:
    rows = ["| metric | value |", "|---|---|"]
    for k, v in summary.get("metrics", {}).items():
        if isinstance(v, (int, float)):
            rows.append(f"| {k} | {v:.4g} |" if isinstance(v, float) else f"| {k} | {v} |")
        elif isinstance(v, str) or (isinstance(v, list) and all(isinstance(x, str) for x in v)):
            rows.append(f"| {k} | {v if isinstance(v, str) else ', '.join(v) or '-'} |")   # e.g. the tokenizer
    rows += [f"| samples | {summary['n']} |", f"| errors | {summary['errors']} |",
             f"| median s/sample | {summary['time_per_sample_median'] or 0:.4f} |",
             f"| peak memory (MB) | {summary['peak_mem_mb']:.0f} |"]
    return "\n".join(rows) + "\n"
