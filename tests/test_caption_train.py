"""Captioner training: the loss falls, checkpoints resume exactly, features are cached once."""
from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch

from tasks.captioning.checkpoint import load_captioner, tiny_captioner
from tasks.captioning.features import TrainingSet, cache_path, cached
from tasks.captioning.train import TrainConfig, train_captioner

WORDS = ["red", "blue", "green", "yellow"]
SHAPES = ["circle", "square"]


@pytest.fixture(autouse=True)
def _one_thread():
    torch.set_num_threads(1)


def _toy_set() -> TrainingSet:
    """8 "images" (random features), 2 captions each, the caption determined by the feature."""
    g = torch.Generator().manual_seed(0)
    feats = torch.randn(8, 16, generator=g)
    caps, index = [], []
    for i in range(8):
        c, s = WORDS[i % 4], SHAPES[i // 4]
        caps += [f"a {c} {s}.", f"a photo of a {c} {s}."]
        index += [i, i]
    return TrainingSet(feats, caps, torch.tensor(index))


def _captioner(data: TrainingSet):
    return tiny_captioner(data.captions, prefix_dim=16, hidden=32, heads=2, seed=0)


def test_training_loss_falls(tmp_path):
    data = _toy_set()
    cfg = TrainConfig(epochs=30, lr=5e-3, warmup=3, batch_size=16, save_every=10_000, log_every=5, keep_epochs=2)
    losses = train_captioner(_captioner(data), data, cfg, tmp_path, resume=False)
    assert len(losses) == 30
    first, last = sum(losses[:3]) / 3, sum(losses[-3:]) / 3
    assert last < 0.5 * first, (first, last)
    assert sorted(p.name for p in tmp_path.glob("ckpt-*.pt")) == ["ckpt-epoch29.pt", "ckpt-epoch30.pt",
                                                                   "ckpt-latest.pt"]
    log = [json.loads(x) for x in (tmp_path / "train_log.jsonl").read_text().splitlines()]
    assert log[-1]["step"] == 30 and log[-1]["loss"] < log[0]["loss"]
    cap = load_captioner(tmp_path / "ckpt-latest.pt")
    out = cap.generate(data.features[:1], num_return_sequences=1)[0][0]
    assert out.startswith("a"), out


@pytest.mark.parametrize("noise", [0.0, 0.016])
def test_resume_gives_the_same_losses(tmp_path, noise):
    data = _toy_set()
    cfg = TrainConfig(epochs=3, lr=3e-3, warmup=2, batch_size=3, save_every=2, log_every=1, noise_variance=noise)
    full = train_captioner(_captioner(data), data, cfg, tmp_path / "a", resume=False)   # 18 steps
    part = TrainConfig(**{**cfg.__dict__, "max_steps": 7})   # stops mid-epoch (6 steps per epoch)
    first = train_captioner(_captioner(data), data, part, tmp_path / "b", resume=False)
    ck = torch.load(tmp_path / "b" / "ckpt-latest.pt", weights_only=False)
    assert ck["step"] == 7 and ck["epoch"] == 1 and "optimizer" in ck and "scheduler" in ck and "rng" in ck
    rest = train_captioner(_captioner(data), data, cfg, tmp_path / "b", resume=True)   # fresh objects
    assert len(first) == 7 and len(rest) == 11
    torch.testing.assert_close(torch.tensor(first + rest), torch.tensor(full), rtol=0, atol=1e-6)


def test_feature_cache_is_computed_once(tmp_path):
    path = cache_path(tmp_path, "coco_karpathy_train", "train", "ViT-B/16", "pretrained/clip/ViT-B-16.pt", "image")
    assert path.name == "coco_karpathy_train__train__ViT-B-16-ViT-B-16__image.pt"
    calls = []

    def compute():
        calls.append(1)
        return torch.ones(3, 4)

    meta = {"arch": "ViT-B/16", "n": 3}
    a = cached(path, meta, compute)
    b = cached(path, meta, compute)
    assert len(calls) == 1 and torch.equal(a, b) and a.dtype == torch.float16
    cached(path, {**meta, "n": 4}, compute)   # different content: recomputed
    assert len(calls) == 2


def test_train_cli_on_files(tmp_path, tiny_clip):
    """``python -m tasks.captioning.train`` end to end on a fabricated LAVIS file, a tiny CLIP checkpoint
    and a tiny local LM folder; features are cached once and a rerun resumes (no new steps)."""
    from PIL import Image

    from tasks.captioning.train import main

    fixtures = Path(__file__).parent / "fixtures"
    torch.save(tiny_clip[0].state_dict(), tmp_path / "clip.pt")
    lm = _captioner(_toy_set())
    lm.lm.save_pretrained(tmp_path / "lm")
    lm.tokenizer.save_pretrained(tmp_path / "lm")
    (tmp_path / "images" / "train2014").mkdir(parents=True)
    ann = []
    for i in range(4):
        Image.new("RGB", (40, 40), (50 * i, 80, 120)).save(tmp_path / "images" / "train2014" / f"{i}.jpg")
        ann += [{"image": f"train2014/{i}.jpg", "caption": f"a {WORDS[i]} circle.", "image_id": str(i)},
                {"image": f"train2014/{i}.jpg", "caption": f"a photo of a {WORDS[i]} circle.", "image_id": str(i)}]
    (tmp_path / "train.json").write_text(json.dumps(ann))
    args = ["--annotations", str(tmp_path / "train.json"), "--images-root", str(tmp_path / "images"),
            "--clip-arch", "RLCF-Tiny-Test", "--clip-weights", str(tmp_path / "clip.pt"),
            "--clip-config", str(fixtures / "RLCF-Tiny-Test.json"), "--lm", str(tmp_path / "lm"),
            "--out-dir", str(tmp_path / "out"), "--device", "cpu", "--workers", "0", "--epochs", "2",
            "--batch-size", "4", "--warmup", "1", "--lr", "1e-3", "--prefix-length", "2", "--clip-length", "2",
            "--num-layers", "1", "--num-heads", "2", "--stop-token", "eos"]
    res = main(args)
    assert res["steps"] == 4 and math.isfinite(res["final_loss"])
    feats = list((tmp_path / "features").glob("*.pt"))
    assert len(feats) == 1 and torch.load(feats[0])["features"].shape == (4, 32)   # one row per image
    assert main(args)["steps"] == 0   # resumed: nothing left to do
    cap = load_captioner(tmp_path / "out" / "ckpt-latest.pt")   # LM found by its recorded folder
    assert cap.config.prefix_length == 2 and not cap.train_lm


def test_training_shows_progress_and_logs_at_the_interval(tmp_path, caplog, capsys):
    """One bar with loss, lr and ETA; a log line and a train_log.jsonl row at the first step and every
    ``log_every`` steps (mean loss since the previous row)."""
    import logging

    data = _toy_set()
    cfg = TrainConfig(epochs=2, lr=1e-3, warmup=1, batch_size=4, log_every=3, save_every=100)   # 4 steps per epoch
    with caplog.at_level(logging.INFO, logger="tasks"):
        losses = train_captioner(_captioner(data), data, cfg, tmp_path, resume=False)
    lines = [r.getMessage() for r in caplog.records if r.name == "tasks.captioning.train"]
    assert [int(m.split()[1].split("/")[0]) for m in lines if m.startswith("step ")] == [1, 3, 6, 8]
    assert all("loss" in m and "lr" in m and "ETA" in m for m in lines if m.startswith("step "))
    err = capsys.readouterr().err
    assert "8/8" in err and "loss=" in err and "lr=" in err
    rows = [json.loads(x) for x in (tmp_path / "train_log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [1, 3, 6, 8]
    assert rows[0]["loss"] == pytest.approx(losses[0]) and rows[1]["loss"] == pytest.approx(sum(losses[1:3]) / 2)


def test_epoch_copies_hold_weights_only_and_every_file_follows_the_umask(tmp_path):
    import os
    import stat

    data = _toy_set()
    cfg = TrainConfig(epochs=2, lr=1e-3, warmup=1, batch_size=8, log_every=10, save_every=100, keep_epochs=2)
    old = os.umask(0o027)
    try:
        train_captioner(_captioner(data), data, cfg, tmp_path / "a", resume=False)
        feats = cached(tmp_path / "a" / "features.pt", {"n": 1}, lambda: torch.ones(2, 3))
    finally:
        os.umask(old)
    latest = torch.load(tmp_path / "a" / "ckpt-latest.pt", weights_only=False)
    epoch = torch.load(tmp_path / "a" / "ckpt-epoch2.pt", weights_only=False)
    assert {"optimizer", "scheduler", "scaler", "rng"} <= set(latest)
    assert set(epoch) == {"model", "epoch", "step", "train_config", "max_tokens"} and epoch["step"] == 4
    for a, b in zip(load_captioner(tmp_path / "a" / "ckpt-epoch2.pt").mapper.parameters(),
                    load_captioner(tmp_path / "a" / "ckpt-latest.pt").mapper.parameters()):
        assert torch.equal(a, b)
    assert (tmp_path / "a" / "ckpt-epoch2.pt").stat().st_size < 0.5 * (tmp_path / "a" / "ckpt-latest.pt").stat().st_size
    for name in ("ckpt-latest.pt", "ckpt-epoch1.pt", "ckpt-epoch2.pt", "features.pt"):
        assert stat.S_IMODE((tmp_path / "a" / name).stat().st_mode) == 0o640, name   # 0666 & ~0027
    assert feats.shape == (2, 3)
    old = os.umask(0o002)
    try:
        from tasks.captioning.checkpoint import save_atomic

        save_atomic({"x": 1}, tmp_path / "b.pt")
    finally:
        os.umask(old)
    assert stat.S_IMODE((tmp_path / "b.pt").stat().st_mode) == 0o664


def test_checkpoint_size_benchmark_tiny():
    """``benchmarks/caption_checkpoint_size.py`` (the README's sizes come from its paper preset): the full checkpoint
    is the weights plus AdamW's two moments (about 3x), the LM is not stored."""
    import sys

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
    import caption_checkpoint_size as bench

    r = bench.measure("tiny")
    assert r["lm_stored"] is False and r["mapper_params"] > 0
    weights = 4 * r["mapper_params"]
    assert weights <= r["weights_only_bytes"] < weights + 100_000
    assert 2.7 < r["full_bytes"] / r["weights_only_bytes"] < 3.2
