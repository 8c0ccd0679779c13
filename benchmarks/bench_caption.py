"""Seconds per image and peak memory of RLCF caption TTA (random weights time like real ones).

    python benchmarks/bench_caption.py                                   # tiny captioner, CPU
    python benchmarks/bench_caption.py --preset paper --device cuda      # ClipCap + OPT-125m, K = 10 (gpu_check.sh)

``paper``: the official ClipCap transformer mapper (ViT-B/16 prefix 512 -> 40 x 768, 40 constants, 8
layers, 8 heads) over a randomly initialised OPT-125m (``OPTConfig()``'s defaults are OPT-125m's: 12
layers, width 768, vocabulary 50,272) in ``--lm-dtype`` (``auto``: fp16 on CUDA as the official code loads it,
float32 on CPU, the configs' ``captioner.lm_dtype: auto``), with a word-level tokenizer
of the same vocabulary size (no download); ViT-L/14 reward; K = 10 beams, 4 steps, official token loss,
``amp=auto`` (fp16 + GradScaler on CUDA). With random weights the LM never emits its stop token, so
every beam search runs the full 50 new tokens: the worst case of the real model.
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
from tasks.captioning.checkpoint import build_word_tokenizer, tiny_captioner  # noqa: E402
from tasks.captioning.model import CaptionerConfig, PrefixCaptioner  # noqa: E402
from tasks.captioning.policy import CaptionPolicy  # noqa: E402
from tasks.common.clip import load_clip  # noqa: E402
from phases import profile_phases, sync  # noqa: E402

#: one caption-TTA episode: per step the candidates (beam search), their log-probs, the reward, backward,
#: optimizer; then the final caption (predict). The first three nest in the losses.
PHASES = ("rlcf/losses (per sample)", "rlcf/policy (generate candidates)", "rlcf/policy (caption log-probs)",
          "rlcf/reward", "rlcf/backward", "rlcf/optimizer", "rlcf/predict")
TOP_LEVEL = ("rlcf/losses (per sample)", "rlcf/backward", "rlcf/optimizer", "rlcf/predict")

FIX = ROOT / "tests" / "fixtures"


def paper_captioner(device: torch.device, lm_dtype: torch.dtype) -> PrefixCaptioner:
    from transformers import OPTConfig, OPTForCausalLM

    cfg = OPTConfig()   # facebook/opt-125m's architecture
    words = [f"w{i}" for i in range(cfg.vocab_size - 5)]   # + 4 special tokens + "."
    tok = build_word_tokenizer([" ".join(words) + " ."])
    assert len(tok.get_vocab()) <= cfg.vocab_size
    lm = OPTForCausalLM(cfg).to(lm_dtype)
    cap = PrefixCaptioner(CaptionerConfig(prefix_dim=512, stop_token=None), lm, tok)
    return cap.to(device)


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--preset", choices=["tiny", "paper"], default="tiny")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--amp", default="auto", choices=["auto", "fp16", "bf16", "fp32"])
    ap.add_argument("--lm-dtype", default="auto", choices=["auto", "float32", "float16", "bfloat16"],
                    help="the paper preset's OPT weights (auto: float16 on CUDA, float32 on CPU)")
    ap.add_argument("--k", type=int, default=10)
    ap.add_argument("--steps", type=int, default=4)
    ap.add_argument("--images", type=int, default=3, help="timed images (after 1 warm-up)")
    ap.add_argument("--json", default=None)
    ap.add_argument("--profile", action="store_true",
                    help="after the table: where one image's episode spends its time (beam search, log-probs, "
                         "reward, backward, optimizer, final caption)")
    args = ap.parse_args(argv)
    device = torch.device(args.device)
    torch.manual_seed(0)
    if args.preset == "paper":
        clip, _, _ = load_clip("ViT-B-16", None, device=device)
        rclip, _, rtok = load_clip("ViT-L-14", None, device=device)
        from tasks.common.precision import resolve_dtype

        cap = paper_captioner(device, resolve_dtype(args.lm_dtype, device, args.amp, "--lm-dtype"))
        res = 224
    else:
        clip, _, _ = load_clip("RLCF-Tiny-Test", None, device=device, config_file=FIX / "RLCF-Tiny-Test.json")
        rclip, _, rtok = load_clip("RLCF-Tiny-Reward", None, device=device, config_file=FIX / "RLCF-Tiny-Reward.json")
        cap = tiny_captioner(["a red circle on a blue square"], prefix_dim=32, hidden=32, heads=2,
                             max_new_tokens=20).to(device)
        res = 32
    policy = CaptionPolicy(cap, clip, token_loss="official").to(device)
    method = rlcf.create_method("rlcf", policy, rlcf.CLIPReward(rclip, rtok), steps=args.steps, k=args.k,
                                lr=2e-6, weight_decay=0.0, eps=1e-6, selection=1.0, amp=args.amp)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    times = []
    for i in range(args.images + 1):
        x = torch.randn(1, 3, res, res, device=device)
        sync(device)
        t0 = time.perf_counter()
        with torch.no_grad():
            method(x)
        sync(device)
        if i > 0:
            times.append(time.perf_counter() - t0)
    peak = (torch.cuda.max_memory_allocated(device) / 2**20 if device.type == "cuda"
            else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU"
    lm = str(next(cap.lm.parameters()).dtype).replace("torch.", "")
    row = {"preset": args.preset, "device": name, "precision": method.precision, "lm_dtype": lm, "k": args.k,
           "steps": args.steps, "s_per_image": statistics.median(times), "peak_mb": peak}
    print("| captioner | device | precision | LM weights | K | steps | s/image (median) | peak memory (MB) |")
    print("|---|---|---|---|---|---|---|---|")
    print(f"| {'ClipCap + OPT-125m' if args.preset == 'paper' else 'tiny'} | {name} | {row['precision']} | {lm} | "
          f"{args.k} | {args.steps} | {row['s_per_image']:.3f} | {peak:.0f} |")
    if args.profile:
        x = torch.randn(1, 3, res, res, device=device)
        row["phases"] = profile_phases(lambda: method(x), PHASES, device, f"caption TTA, {args.preset}, K={args.k}, "
                                       f"{args.steps} steps", top_level=TOP_LEVEL)
    if args.json:
        Path(args.json).write_text(json.dumps(row, indent=1))
    return row


if __name__ == "__main__":
    main()
