"""The embedded-world caption demo runs end to end (tiny sizes, random tiny CLIPs)."""
from __future__ import annotations

import json
from pathlib import Path

import torch

FIXTURES = Path(__file__).parent / "fixtures"


def test_world_demo_end_to_end(tmp_path):
    from tasks.captioning.world_demo import main
    from tasks.world.splits import WorldConfig

    torch.set_num_threads(1)
    world = WorldConfig(sizes={**WorldConfig().sizes, "train": 48, "sketch": 4, "dev": 4})
    clip = str(FIXTURES / "RLCF-Tiny-Test.json")
    reward = str(FIXTURES / "RLCF-Tiny-Reward.json")
    res = main(["--out-dir", str(tmp_path), "--n-train", "48", "--n-test", "2", "--n-dev", "2", "--epochs", "1",
                "--k", "2", "--steps", "1", "--lr-grid", "1e-4,1e-3", "--policy-clip", clip, "--reward-clip", reward,
                "--eval-clip", clip, "--test-split", "sketch", "--data-root", str(tmp_path / "world"),
                "--tokenizer", "simple"], world=world)
    m = res["metrics"]
    for key in ("CIDEr", "zeroshot/CIDEr", "CLIPScore", "zeroshot/CLIPScore", "RefCLIPScore", "vocab_size"):
        assert key in m, key
    assert res["n_test"] == 2 and len(res["examples"]) == 2
    assert set(res["dev_sweep"]) == {"0.0001", "0.001"} and res["adapt"]["lr"] in (1e-4, 1e-3)
    assert json.loads((tmp_path / "results.json").read_text())["test_split"] == "sketch"
    md = (tmp_path / "results.md").read_text()
    assert "| CIDEr |" in md and "before" in md
