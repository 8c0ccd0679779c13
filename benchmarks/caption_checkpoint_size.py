"""Disk use of captioner training checkpoints: a weights-only epoch copy (``ckpt-epoch<E>.pt``) against the full
``ckpt-latest.pt`` (with the AdamW state, scheduler, GradScaler and RNG state), for a random-weight captioner,
after one real training step on CPU (so the optimizer state exists).

    python benchmarks/caption_checkpoint_size.py [--preset paper|tiny] [--json sizes.json]

``paper``: the official ClipCap / CapDec on OPT-125m (transformer mapper, ViT-B/16 prefix of 512, 40 + 40 tokens,
8 layers, 8 heads) with a random OPT-125m (``OPTConfig()`` defaults); the frozen LM is stored by path, so its
weights are in neither file. ``tiny``: a seconds-long version of the same (the tests).
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

PRESETS = {
    "paper": {"mapper": {"prefix_dim": 512, "prefix_length": 40, "clip_length": 40, "num_layers": 8, "num_heads": 8},
              "lm": {}},
    "tiny": {"mapper": {"prefix_dim": 16, "prefix_length": 4, "clip_length": 4, "num_layers": 2, "num_heads": 2},
             "lm": {"hidden_size": 32, "num_hidden_layers": 2, "ffn_dim": 64, "num_attention_heads": 2,
                    "word_embed_proj_dim": 32, "max_position_embeddings": 64}},
}
CAPTIONS = ["a dog runs on the beach.", "two people ride bicycles down a street."]


def measure(preset: str = "paper", threads: int = 1) -> dict:
    """Byte sizes of the two checkpoint kinds and the parameter counts behind them."""
    from transformers import OPTConfig, OPTForCausalLM

    from tasks.captioning.checkpoint import build_word_tokenizer
    from tasks.captioning.features import TrainingSet
    from tasks.captioning.model import CaptionerConfig, PrefixCaptioner
    from tasks.captioning.train import TrainConfig, train_captioner

    torch.set_num_threads(threads)
    torch.manual_seed(0)
    p = PRESETS[preset]
    tok = build_word_tokenizer(CAPTIONS)
    lm = OPTForCausalLM(OPTConfig(pad_token_id=1, bos_token_id=2, eos_token_id=2, **p["lm"])).eval()
    cap = PrefixCaptioner(CaptionerConfig(stop_token=None, **p["mapper"]), lm, tok)
    data = TrainingSet(torch.randn(2, p["mapper"]["prefix_dim"]), list(CAPTIONS), torch.arange(2))
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp)
        train_captioner(cap, data, TrainConfig(epochs=1, batch_size=2, warmup=1, amp=False), out,
                        lm_path="pretrained/opt-125m")
        full, weights = (out / "ckpt-latest.pt").stat().st_size, (out / "ckpt-epoch1.pt").stat().st_size
    return {"preset": preset, "mapper_params": sum(t.numel() for t in cap.mapper.parameters()),
            "lm_params": sum(t.numel() for t in lm.parameters()), "lm_stored": False,
            "weights_only_bytes": weights, "full_bytes": full}


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--preset", choices=sorted(PRESETS), default="paper")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--json", default=None, help="also write the result here")
    args = ap.parse_args(argv)
    r = measure(args.preset, args.threads)
    mb = 1e6
    print(f"{args.preset}: mapper {r['mapper_params'] / 1e6:.1f}M parameters (the LM, {r['lm_params'] / 1e6:.1f}M, "
          f"is stored by path, not in the files)\n"
          f"  ckpt-epoch<E>.pt (weights only): {r['weights_only_bytes'] / mb:.1f} MB\n"
          f"  ckpt-latest.pt (+ AdamW, scheduler, scaler, RNG): {r['full_bytes'] / mb:.1f} MB")
    if args.json:
        Path(args.json).write_text(json.dumps(r, indent=2))
    return r


if __name__ == "__main__":
    main()
