"""Wall time of one call split by the engine's ``record_function`` phases (shared by the benchmarks).

The labels are set in ``rlcf/engine.py``, ``rlcf/forward.py``, ``rlcf/methods.py`` and the policies
(``rlcf/policy (...)``); phases can nest (the reward runs inside the losses of a batch). What no phase
covers is Python and glue: the last row, wall time minus the top-level phases.
"""
from __future__ import annotations

import time
from typing import Callable, Sequence

import torch


def sync(device: torch.device) -> None:
    """Wait for the device's queued work (CUDA); a no-op on CPU."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def profile_phases(call: Callable[[], object], phases: Sequence[str], device: torch.device, label: str,
                   top_level: Sequence[str] | None = None) -> dict[str, float]:
    """Run ``call`` once under the torch profiler (after one warm-up call) and print a markdown table of
    seconds per phase; ``top_level``: the phases that do not nest in each other (default: all), whose
    sum is subtracted from the wall time for the "other" row."""
    from torch.profiler import ProfilerActivity, profile

    acts = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    with torch.no_grad():
        call()   # warm-up
        sync(device)
        t0 = time.perf_counter()
        with profile(activities=acts) as prof:
            call()
            sync(device)
        total = time.perf_counter() - t0
    out = {p: 0.0 for p in phases}
    for ev in prof.key_averages():
        if ev.key in out:
            t = ev.device_time_total if device.type == "cuda" and ev.device_time_total else ev.cpu_time_total
            out[ev.key] = t / 1e6
    out["other (Python, glue)"] = max(0.0, total - sum(out[p] for p in (top_level or phases)))
    print(f"\nprofile of one call ({label}): {total:.3f} s wall (profiler on)")
    print("| phase | s | share |\n|---|---|---|")
    for p, t in out.items():
        print(f"| {p.removeprefix('rlcf/')} | {t:.3f} | {100 * t / total:.0f}% |")
    return out
