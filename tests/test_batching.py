"""The runner's batched loop (``tasks/common/batching.py``): out-of-memory halving loses no sample,
``run.batch=auto`` sizes B from the first sample's peak GPU memory (the CUDA calls are faked here: tests
never need a GPU), a failing batch falls back to one sample at a time, and batches under sharding keep
the records of an unbatched single-process run."""
from __future__ import annotations

import logging

import pytest
import torch

from tasks.common import batching
from tasks.common.runner import read_records, run


class Batched:
    """Sample i is i * i; ``process_batch`` records the sizes it was called with and raises an out-of-memory
    error for batches larger than ``fits`` (``None``: any size fits)."""

    online = False

    def __init__(self, n: int, fits: int | None = None, fail_on: int | None = None) -> None:
        self.n, self.fits, self.fail_on, self.calls = n, fits, fail_on, []

    def __len__(self) -> int:
        return self.n

    def sample_id(self, i: int) -> str:
        return f"s{i}"

    def load(self, i: int) -> int:
        return i * i

    def process(self, i: int, sample: int) -> dict:
        if i == self.fail_on:
            raise ValueError(f"sample {i} is broken")
        return {"value": sample, "alone": True}

    def process_batch(self, indices: list[int], samples: list[int]) -> list[dict]:
        self.calls.append(len(indices))
        if self.fits is not None and len(indices) > self.fits:
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
        if self.fail_on in indices:
            raise RuntimeError("one sample of the batch broke it")
        return [{"value": s} for s in samples]

    def summarize(self, records: list[dict]) -> dict:
        return {"total": sum(r["value"] for r in records)}


def values(out) -> dict[int, int]:
    return {i: r.get("value") for i, r in read_records(out).items()}


def test_out_of_memory_halves_the_batch_and_loses_no_sample(tmp_path, caplog):
    task = Batched(11, fits=2)
    with caplog.at_level(logging.WARNING, logger="tasks.common.batching"):
        summary = run(task, tmp_path / "oom", batch=8)
    assert values(tmp_path / "oom") == {i: i * i for i in range(11)}
    assert summary["n"] == 11 and summary["errors"] == 0
    assert summary["metrics"]["total"] == sum(i * i for i in range(11))
    assert task.calls[:3] == [8, 4, 2] and set(task.calls[3:]) <= {1, 2}   # halved twice, then kept
    assert sum(c for c in task.calls if c <= 2) == 11                     # every sample processed exactly once
    assert "out of memory with run.batch=8: retrying with 4" in caplog.text


def test_a_failing_batch_retries_its_samples_one_by_one(tmp_path):
    task = Batched(6, fail_on=4)
    run(task, tmp_path / "f", batch=3)
    recs = read_records(tmp_path / "f")
    assert [recs[i].get("value") for i in range(4)] == [0, 1, 4, 9]
    assert recs[4]["error"] == "ValueError: sample 4 is broken" and recs[5] == {**recs[5], "value": 25, "alone": True}
    assert task.calls == [3, 3]


class FakeCuda:
    """Just enough of ``torch.cuda`` for the auto batch size: a sample takes ``per`` bytes at its peak."""

    def __init__(self, per: int, free: int) -> None:
        self.per, self.free, self.allocated, self.peak = per, free, 1000, 1000

    def reset_peak_memory_stats(self, device=None) -> None:
        self.peak = self.allocated

    def memory_allocated(self, device=None) -> int:
        return self.allocated

    def max_memory_allocated(self, device=None) -> int:
        return self.peak

    def mem_get_info(self, device=None) -> tuple[int, int]:
        return self.free, 2 * self.free


@pytest.mark.parametrize("per,free,expected", [(100, 2000, 16), (100, 10**9, batching.AUTO_MAX), (5000, 1000, 1)])
def test_auto_batch_fits_a_fraction_of_free_gpu_memory(monkeypatch, per, free, expected):
    fake = FakeCuda(per, free)
    monkeypatch.setattr(torch.cuda, "mem_get_info", fake.mem_get_info)
    assert batching.auto_batch(per, torch.device("cuda")) == expected   # floor(0.8 * free / per), in [1, AUTO_MAX]
    assert batching.auto_batch(per, torch.device("cpu")) == batching.AUTO_CPU == 1
    assert batching.auto_batch(per, None) == 1


def test_auto_batch_sizes_b_from_the_first_sample_on_cuda(tmp_path, monkeypatch, caplog):
    """The first sample runs alone and its peak memory (above what was allocated before it) sets B."""
    fake = FakeCuda(per=300, free=1500)   # 0.8 * 1500 // 300 = 4

    class Measured(Batched):
        def process(self, i, sample):
            fake.peak = fake.allocated + fake.per   # one sample's peak
            return super().process(i, sample)

    for name in ("reset_peak_memory_stats", "memory_allocated", "max_memory_allocated", "mem_get_info"):
        monkeypatch.setattr(torch.cuda, name, getattr(fake, name))
    task, written = Measured(10), []
    with caplog.at_level(logging.INFO, logger="tasks.common.batching"):
        batching.process_batched(task, ((i, task.load(i), None) for i in range(10)), "auto",
                                 lambda rec: written.append(rec), torch.device("cuda"), lambda: 0.0)
    assert task.calls == [4, 4, 1]              # sample 0 alone (process), then 4 + 4 + the last one
    assert "run.batch=auto: 4 samples at once" in caplog.text
    assert [r["index"] for r in written] == list(range(10))
    assert [r["value"] for r in written] == [i * i for i in range(10)]


def test_batches_under_sharding_keep_the_records_of_one_unbatched_process(tmp_path, monkeypatch):
    """Each rank batches its own shard (order[rank::world]); rank 0 merges: the records and the summary
    equal a single unbatched process's."""
    single = run(Batched(9), tmp_path / "single")
    out = tmp_path / "sharded"
    tasks = {}
    for rank in (1, 0):   # rank 0 merges, so it runs last (no process group: the barrier is a no-op)
        monkeypatch.setenv("RANK", str(rank))
        monkeypatch.setenv("WORLD_SIZE", "2")
        tasks[rank] = Batched(9)
        summary = run(tasks[rank], out, batch=2)
    assert sorted(p.name for p in out.glob("records-*.jsonl")) == ["records-0.jsonl", "records-1.jsonl"]
    assert tasks[0].calls == [2, 2, 1] and tasks[1].calls == [2, 2]    # 5 and 4 samples
    assert values(out) == values(tmp_path / "single")
    assert summary["metrics"] == single["metrics"] and summary["n"] == 9 and summary["world_size"] == 2
