"""Per-sample time and peak memory of every classification TTA method (random weights time like real ones).

    python benchmarks/bench_methods.py                          # tiny models, CPU
    python benchmarks/bench_methods.py --preset cpu-large       # ViT-B-32 policy / ViT-B-16 reward, CPU
    python benchmarks/bench_methods.py --preset paper --device cuda --amp fp16   # ViT-B/16 + ViT-L/14, 64 views

Prints a markdown table: method, policy, views, steps, classes, median seconds per sample (after a
warm-up), peak memory. Times never go into tests.
"""
from __future__ import annotations

import argparse
import resource
import statistics
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import rlcf  # noqa: E402
import tasks.classification  # noqa: E402,F401
from tasks.classification.policies import EncoderPolicy, PromptPolicy, class_prompts  # noqa: E402
from tasks.common.clip import load_clip  # noqa: E402

FIX = ROOT / "tests" / "fixtures"
PRESETS = {
    "tiny": dict(arch="RLCF-Tiny-Test", reward="RLCF-Tiny-Reward", classes=200, views=64),
    "cpu-large": dict(arch="ViT-B-32", reward="ViT-B-16", classes=200, views=16),
    "paper": dict(arch="ViT-B-16", reward="ViT-L-14", classes=1000, views=64),
}
# (method, policy, overrides) rows: the official settings of each method
ROWS = [
    ("zeroshot", "prompt", {}),
    ("tpt", "prompt", dict(steps=1, lr=5e-3)),
    ("ctpt", "prompt", dict(steps=1, lr=5e-3)),
    ("rlcf", "prompt", dict(steps=3, lr=7e-3, k=3)),
    ("rlcf", "encoder", dict(steps=3, lr=1e-5, k=3, train_mode=True)),
    ("kd", "encoder", dict(steps=3, lr=1e-5, train_mode=True)),
    ("zero", "encoder", dict(selection=0.3)),
    ("tda", "encoder", {}),
]


def make(name: str, device: torch.device):
    cfg = FIX / f"{name}.json"
    return load_clip(name, None, device=device, config_file=cfg if cfg.exists() else None)


def peak_mb(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--preset", choices=sorted(PRESETS), default="tiny")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--amp", default=None, choices=[None, "fp16", "bf16"])
    ap.add_argument("--samples", type=int, default=5, help="timed samples per method (after 1 warm-up)")
    ap.add_argument("--views", type=int, default=None)
    ap.add_argument("--classes", type=int, default=None)
    ap.add_argument("--methods", default=None, help="comma-separated subset, e.g. rlcf,tpt")
    ap.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    p = dict(PRESETS[args.preset])
    views_n, n_cls = args.views or p["views"], args.classes or p["classes"]
    device = torch.device(args.device)
    torch.manual_seed(0)
    classnames = [f"class number {i}" for i in range(n_cls)]
    policy_clip, _, tok = make(p["arch"], device)
    reward_clip, _, rtok = make(p["reward"], device)
    res = int(policy_clip.visual.image_size[0])
    reward = rlcf.CLIPReward(reward_clip, rtok)
    reward.set_candidates(class_prompts(classnames))
    snapshot = {k: v.clone() for k, v in policy_clip.state_dict().items()}
    print(f"preset {args.preset}: policy {p['arch']} ({res}px), reward {p['reward']}, device {device}, amp {args.amp}, "
          f"threads {torch.get_num_threads()}")
    print("| method | policy | views | steps | classes | s/sample (median) | peak memory (MB) |")
    print("|---|---|---|---|---|---|---|")
    wanted = set(args.methods.split(",")) if args.methods else None
    for name, kind, over in ROWS:
        if wanted and name not in wanted:
            continue
        policy_clip.load_state_dict(snapshot)
        policy_clip.requires_grad_(False)
        policy = (PromptPolicy(policy_clip, classnames, tok) if kind == "prompt"
                  else EncoderPolicy(policy_clip, classnames, tok)).to(device)
        cls = rlcf.get_method(name)
        method = rlcf.create_method(name, policy, reward if cls.needs_reward else None, amp=args.amp, **over)
        x = torch.randn(views_n, 3, res, res, device=device)
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)
        times = []
        for i in range(args.samples + 1):
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            t0 = time.perf_counter()
            with torch.no_grad():
                method(x)
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            if i > 0:
                times.append(time.perf_counter() - t0)
        print(f"| {name} | {kind} | {views_n} | {method.config.steps} | {n_cls} | "
              f"{statistics.median(times):.4f} | {peak_mb(device):.0f} |", flush=True)


if __name__ == "__main__":
    main()
