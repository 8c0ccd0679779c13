"""Per-sample time and peak memory of every classification TTA method (random weights time like real ones).

    python benchmarks/bench_methods.py                          # tiny models, CPU
    python benchmarks/bench_methods.py --preset cpu-large       # ViT-B-32 policy / ViT-B-16 reward, CPU
    python benchmarks/bench_methods.py --preset paper --device cuda --amp fp16 --classes 1000,200
                                                                # ViT-B/16 + ViT-L/14, 64 views (gpu_check.sh)
    python benchmarks/bench_methods.py --preset medium --batch 1,4,16,32   # batched episodes

Prints a markdown table: method, policy, views, steps, classes, batch B, median seconds per sample (after a
warm-up), samples/s, the ratio to B=1 measured in the same run, peak memory (GPU: ``max_memory_allocated``
per row; CPU: the process's max RSS so far). Times never go into tests.
"""
from __future__ import annotations

import argparse
import json
import resource
import statistics
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import rlcf  # noqa: E402
from tasks.methods import load_all  # noqa: E402
from tasks.classification.policies import EncoderPolicy, PromptPolicy, PrototypePolicy, class_prompts  # noqa: E402
from tasks.common.clip import load_clip  # noqa: E402
from phases import profile_phases, sync  # noqa: E402

FIX = ROOT / "tests" / "fixtures"
PRESETS = {
    "tiny": dict(arch="RLCF-Tiny-Test", reward="RLCF-Tiny-Reward", classes=200, views=64),
    "medium": dict(arch="ViT-B-32", reward="ViT-B-32", classes=100, views=16),
    "cpu-large": dict(arch="ViT-B-32", reward="ViT-B-16", classes=200, views=16),
    "paper": dict(arch="ViT-B-16", reward="ViT-L-14", classes=1000, views=64),
}
#: the official settings of each method: its (policy, overrides) rows
OFFICIAL: dict[str, list[tuple[str, dict]]] = {
    "zeroshot": [("prompt", {})],
    "tpt": [("prompt", dict(steps=1, lr=5e-3, weight_decay=0.01))],
    "ctpt": [("prompt", dict(steps=1, lr=5e-3, weight_decay=0.01))],
    "rlcf": [("prompt", dict(steps=3, lr=7e-3, k=3)), ("encoder", dict(steps=3, lr=1e-5, k=3, train_mode=True))],
    "kd": [("encoder", dict(steps=3, lr=1e-5, train_mode=True))],
    "zero_vote": [("encoder", dict(selection=0.3))],
    "tda": [("encoder", {})],
    "mta": [("encoder", {})],
    "tps": [("prototype", dict(steps=1, lr=5e-3, weight_decay=0.01))],
    "dmn": [("encoder", {})],
    "dpe": [("encoder", {})],
    "boostadapter": [("encoder", {})],
}
POLICIES = ("prompt", "encoder", "prototype")
POLICY_CLASSES = {"prompt": PromptPolicy, "encoder": EncoderPolicy, "prototype": PrototypePolicy}


def method_rows() -> list[tuple[str, str | None, dict]]:
    """``(method, policy, overrides)`` of every registered method: its official rows, else one row with its default
    config on the first policy of :data:`POLICIES` it supports (``None`` here: chosen when the policies exist)."""
    return [(name, kind, over) for name in rlcf.list_methods() for kind, over in OFFICIAL.get(name, [(None, {})])]


def make(name: str, device: torch.device):
    cfg = FIX / f"{name}.json"
    return load_clip(name, None, device=device, config_file=cfg if cfg.exists() else None)


def peak_mb(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def time_method(method: rlcf.Method, x: torch.Tensor, samples: int, device: torch.device) -> list[float]:
    """Seconds per sample of ``method(x)`` (``x``: one sample ``[V, ...]`` or a batch ``[B, V, ...]``), after
    one warm-up call."""
    times = []
    per_call = x.shape[0] if x.dim() == 5 else 1
    for i in range(samples + 1):
        sync(device)
        t0 = time.perf_counter()
        with torch.no_grad():
            method(x)
        sync(device)
        if i > 0:
            times.append((time.perf_counter() - t0) / per_call)
    return times


PHASES = ("rlcf/workspace reset", "rlcf/losses (per sample)", "rlcf/policy (image tower)", "rlcf/policy (text tower)",
          "rlcf/reward", "rlcf/backward", "rlcf/optimizer", "rlcf/predict")
#: the phases that nest in no other: the towers and the reward run inside the losses (and the towers in predict)
TOP_LEVEL = ("rlcf/workspace reset", "rlcf/losses (per sample)", "rlcf/backward", "rlcf/optimizer", "rlcf/predict")


def main(argv: list[str] | None = None) -> list[dict]:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--preset", choices=sorted(PRESETS), default="tiny")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--amp", default=None, choices=[None, "auto", "fp16", "bf16"],
                    help="autocast (default: fp32; 'auto' = fp16 + GradScaler on CUDA, as the official code)")
    ap.add_argument("--samples", type=int, default=5, help="timed samples per method (after 1 warm-up)")
    ap.add_argument("--views", type=int, default=None)
    ap.add_argument("--classes", default=None, help="class count(s), comma-separated, e.g. 1000,200")
    ap.add_argument("--methods", default=None, help="comma-separated subset, e.g. rlcf,tpt")
    ap.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    ap.add_argument("--json", default=None, help="also write the rows to this JSON file")
    ap.add_argument("--batch", default="1", help="batch sizes B (samples adapted at once), e.g. 1,4,16,32")
    ap.add_argument("--profile", action="store_true",
                    help="after the table: where one batched call (the largest B) spends its time, per phase")
    args = ap.parse_args(argv)
    load_all()
    if args.threads:
        torch.set_num_threads(args.threads)
    p = dict(PRESETS[args.preset])
    views_n = args.views or p["views"]
    class_counts = [int(c) for c in (args.classes or str(p["classes"])).split(",")]
    device = torch.device(args.device)
    torch.manual_seed(0)
    policy_clip, _, tok = make(p["arch"], device)
    reward_clip, _, rtok = make(p["reward"], device)
    res = int(rlcf.reward.input_resolution(policy_clip) or 224)
    snapshot = {k: v.clone() for k, v in policy_clip.state_dict().items()}
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU"
    print(f"preset {args.preset}: policy {p['arch']} ({res}px), reward {p['reward']}, device {device} ({name}), "
          f"amp {args.amp}, threads {torch.get_num_threads()}")
    batches = [int(b) for b in args.batch.split(",")]
    print("| method | policy | views | steps | classes | B | s/sample (median) | samples/s | vs B=1 | peak memory (MB) |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    wanted = set(args.methods.split(",")) if args.methods else None
    rows = []
    for n_cls in class_counts:
        classnames = [f"class number {i}" for i in range(n_cls)]
        reward = rlcf.CLIPReward(reward_clip, rtok)
        reward.set_candidates(class_prompts(classnames))
        for mname, kind, over in method_rows():
            if wanted and mname not in wanted:
                continue
            policy_clip.load_state_dict(snapshot)
            policy_clip.requires_grad_(False)
            cls = rlcf.get_method(mname)
            kinds = [kind] if kind else POLICIES
            for kind in kinds:
                policy = POLICY_CLASSES[kind](policy_clip, classnames, tok).to(device)
                if cls.supports(policy):
                    break
            method = rlcf.create_method(mname, policy, reward if cls.needs_reward else None, amp=args.amp, **over)
            base = None
            for b in batches:
                if b > 1 and method.online:
                    continue   # online methods refuse batching: their stream order is the method
                x = torch.randn(*((b,) if b > 1 else ()), views_n, 3, res, res, device=device)
                if device.type == "cuda":
                    torch.cuda.reset_peak_memory_stats(device)
                try:
                    times = time_method(method, x, args.samples, device)
                except torch.OutOfMemoryError:
                    print(f"| {mname} | {kind} | {views_n} | {method.config.steps} | {n_cls} | {b} | out of memory | | | |",
                          flush=True)
                    del x
                    torch.cuda.empty_cache()
                    break
                sps = 1.0 / statistics.median(times)
                base = sps if b == 1 else base
                row = {"method": mname, "policy": kind, "views": views_n, "steps": method.config.steps,
                       "classes": n_cls, "batch": b, "s_per_sample": statistics.median(times), "samples_per_s": sps,
                       "ratio_to_b1": sps / base if base else None, "peak_mb": peak_mb(device),
                       "precision": method.precision, "device": name}
                rows.append(row)
                ratio = f"{row['ratio_to_b1']:.2f}x" if row["ratio_to_b1"] else "-"
                print(f"| {mname} | {kind} | {views_n} | {row['steps']} | {n_cls} | {b} | {row['s_per_sample']:.4f} | "
                      f"{sps:.1f} | {ratio} | {row['peak_mb']:.0f} |", flush=True)
            if args.profile and max(batches) > 1 and not method.online:
                xb = torch.randn(max(batches), views_n, 3, res, res, device=device)
                rows[-1]["phases"] = profile_phases(lambda m=method, xb=xb: m(xb), PHASES, device,
                                                    f"{mname} {kind}, {n_cls} classes, B={max(batches)}",
                                                    top_level=TOP_LEVEL)
            del method, policy
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=1))
    return rows


if __name__ == "__main__":
    main()
