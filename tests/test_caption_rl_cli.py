"""Caption RL command lines: the COCO scripts fail at once naming missing inputs; ``tasks.caption_rl.train`` runs,
resumes and exports on a synthetic mini set; the embedded-world run goes end to end (tiny sizes, random CLIPs)."""
from __future__ import annotations

import json
import os
import subprocess
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

REPO = Path(__file__).resolve().parents[1]
FIX = REPO / "tests" / "fixtures"
ENV_KEYS = ("CKPT", "COCO_ANN", "COCO_TEST_ANN", "COCO_IMAGES", "CONFIG")


@pytest.fixture(autouse=True)
def _one_thread():
    torch.set_num_threads(1)


def _run(script: str, tmp_path: Path, *args: str) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k not in ENV_KEYS}
    env.update(DATA_ROOT=str(tmp_path / "data"), PRETRAINED=str(tmp_path / "pretrained"), OUTPUT=str(tmp_path / "out"))
    return subprocess.run(["bash", str(REPO / "scripts" / script), *args], capture_output=True, text=True, env=env,
                          timeout=60)


@pytest.mark.parametrize("script,clips", [("train_rl_gt_coco.sh", ("ViT-B-16", "ViT-B-32")),
                                          ("train_rl_vlrm_coco.sh", ("ViT-B-16", "ViT-L-14", "ViT-B-32"))])
def test_scripts_fail_at_once_naming_missing_files(tmp_path, script, clips):
    t0 = time.perf_counter()
    r = _run(script, tmp_path, "0")
    assert r.returncode == 2 and time.perf_counter() - t0 < 10
    for rel in ("out/clipcap_opt125m_transformer_coco_01/ckpt-latest.pt",
                "data/coco/annotations/coco_karpathy_train.json",
                "data/coco/annotations/coco_karpathy_test.json", "data/coco/images", "pretrained/opt-125m/config.json",
                *(f"pretrained/clip/{c}.pt" for c in clips)):
        assert str(tmp_path / rel) in r.stderr, rel
    r = _run(script, tmp_path)
    assert r.returncode != 0 and "usage" in r.stderr


def _mini_set(root: Path) -> None:
    from tasks.captioning.checkpoint import captioner_state, save_atomic, tiny_captioner

    (root / "images").mkdir(parents=True)
    rng = np.random.default_rng(0)
    train, test = [], []
    for i in range(10):
        arr = (rng.random((40, 40, 3)) * 60).astype(np.uint8)
        arr[..., i % 3] += 150
        Image.fromarray(arr).save(root / "images" / f"im{i}.png")
        colour = ["red", "green", "blue"][i % 3]
        caps = [f"a {colour} square on a dark background.", f"an image of a {colour} square."]
        (train if i < 7 else test).extend({"image": f"im{i}.png", "caption": c, "image_id": str(i)} for c in caps)
    (root / "train.json").write_text(json.dumps(train))
    (root / "test.json").write_text(json.dumps(test))
    cap = tiny_captioner([t["caption"] for t in train], prefix_dim=32, hidden=32, heads=2, seed=0, max_new_tokens=6)
    save_atomic(captioner_state(cap), root / "captioner.pt")


def test_train_cli_runs_resumes_and_exports(tmp_path):
    from tasks.caption_rl.train import main
    from tasks.captioning.checkpoint import load_captioner

    d = tmp_path / "mini"
    _mini_set(d)
    tiny, rew = FIX / "RLCF-Tiny-Test.json", FIX / "RLCF-Tiny-Reward.json"
    args = ["--recipe", "vlrm_retrieval", f"captioner.checkpoint={d / 'captioner.pt'}", "captioner.lm=null",
            "captioner.max_new_tokens=6", "captioner.stop_token=null", "captioner.lora.enabled=true",
            "captioner.lora.value=true", "captioner.lora.r=2", "model.arch=RLCF-Tiny-Test", "model.pretrained=null",
            f"model.config_file={tiny}", "reward.arch=RLCF-Tiny-Reward", "reward.pretrained=null",
            f"reward.config_file={rew}", "eval.arch=RLCF-Tiny-Test", "eval.pretrained=null", f"eval.config_file={tiny}",
            f"data.annotations={d / 'train.json'}", f"data.images_root={d / 'images'}",
            f"data.feature_dir={tmp_path / 'feat'}", f"eval.annotations={d / 'test.json'}",
            f"eval.images_root={d / 'images'}", "eval.coco=false", "eval.num_beams=2", "optim.batch_size=4",
            "optim.log_every=1", "vlrm.value_width=8", f"run.out_dir={tmp_path / 'run'}", "run.workers=0",
            "run.device=cpu"]
    first = main(args + ["optim.steps=1"])
    assert first["steps_run"] == 1 and first["final_eval"]["n"] == 3
    again = main(args + ["optim.steps=2"])                          # resumes at step 1
    assert again["steps_run"] == 1
    log = [json.loads(x) for x in (tmp_path / "run" / "train_log.jsonl").read_text().splitlines()]
    assert [x["step"] for x in log] == [1, 2] and "phi_abs" in log[0] and log[0]["ref"] == 0.0
    cap = load_captioner(tmp_path / "run" / "captioner-rl.pt")     # LoRA-free plain captioner
    assert cap.generate(torch.randn(1, 32))[0][0] is not None
    # train: prefix + reward features; test: prefix features, reused as eval features (same CLIP)
    assert len(list((tmp_path / "feat").glob("*.pt"))) == 3


def test_world_run_end_to_end(tmp_path):
    from tasks.caption_rl.world import main
    from tasks.world.splits import WorldConfig

    world = WorldConfig(sizes={**WorldConfig().sizes, "train": 24, "val": 6})
    tiny, rew = str(FIX / "RLCF-Tiny-Test.json"), str(FIX / "RLCF-Tiny-Reward.json")
    res = main(["--recipe", "gt_contrastive", "--ablation", "no_gt", "--out-dir", str(tmp_path / "out"),
                "--n-train", "24", "--n-eval", "6", "--epochs", "1", "--steps", "2", "--policy-clip", tiny,
                "--reward-clip", rew, "--eval-clip", tiny, "--data-root", str(tmp_path / "world"),
                "optim.batch_size=6", "captioner.max_new_tokens=6", "gt.num_beams=2"], world=world)
    for key in ("t2i/R@1", "i2t/R@1", "self_BLEU-4", "vocab_size", "mean_length", "CIDEr"):
        assert key in res["before"] and key in res["after"], key
    assert res["steps"] == 2 and res["n_eval"] == 6
    assert "| t2i/R@1 |" in (tmp_path / "out" / "results.md").read_text()
    with pytest.raises(ValueError):
        main(["--recipe", "vlrm", "--ablation", "no_disc"])
