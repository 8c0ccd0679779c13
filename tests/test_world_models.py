"""Tests of the world's CLIP models: training, checkpoints, cache validity (tiny runs, CPU, < 60 s)."""
from __future__ import annotations

import json
from dataclasses import replace

import open_clip
import pytest
import torch

from tasks.world.models import (ModelSpec, checkpoint_is_valid, checkpoint_paths, ensure_world_model, share,
                                load_world_clip, model_specs, register_world_models)
import tasks.world.models as wm
from tasks.world.splits import WorldConfig, load_split_tensors
from tasks.world.train import TrainConfig, init_for_short_training, normalize, train_clip, zero_shot_accuracy

torch.set_num_threads(2)

TINY = {"train": 48, "train_extra": 16, "dev": 8, "val": 8, "v2": 4, "sketch": 4, "rendition": 4,
        "adversarial": 2, "corrupt": 4}


@pytest.fixture(scope="module")
def world() -> WorldConfig:
    register_world_models()   # every test may run alone (-k)
    return WorldConfig(sizes=dict(TINY), filter_steps=2)


def tiny_spec(world: WorldConfig, which: str = "policy", steps: int = 2) -> ModelSpec:
    s = model_specs(world)[which]
    return replace(s, train=replace(s.train, steps=steps, batch_size=16, warmup=1))


def test_configs_registered_and_tokenizer_offline() -> None:
    register_world_models()
    for name in ("World-Policy-RN", "World-Reward-RN", "World-Filter-RN"):
        assert name in open_clip.list_models()
        tok = open_clip.get_tokenizer(name)
        assert isinstance(tok, open_clip.tokenizer.SimpleTokenizer) and tok(["a photo of a star."]).shape == (1, 20)


def test_short_training_lowers_loss(tmp_path, world) -> None:
    register_world_models()
    images, _, caps = load_split_tensors("train", root=tmp_path, world=world)
    images, caps = images[:32], caps[:32]
    tok = open_clip.get_tokenizer("World-Policy-RN")
    tokens = tok([c for cs in caps for c in cs]).view(32, 5, -1)
    torch.manual_seed(0)
    model = open_clip.create_model("World-Policy-RN", pretrained=None)
    assert init_for_short_training(model) == 4
    cfg = TrainConfig(steps=30, batch_size=32, lr=2e-3, warmup=3, seed=0)
    losses = train_clip(model, images, tokens, cfg, progress=False)
    assert len(losses) == 30 and all(map(lambda v: v == v, losses))
    assert sum(losses[-5:]) / 5 < 0.8 * sum(losses[:5]) / 5


def test_training_is_deterministic(tmp_path, world) -> None:
    images, _, caps = load_split_tensors("train", root=tmp_path, world=world)
    tok = open_clip.get_tokenizer("World-Filter-RN")
    tokens = tok([c for cs in caps for c in cs]).view(len(caps), 5, -1)
    runs = []
    for _ in range(2):
        torch.manual_seed(0)
        m = open_clip.create_model("World-Filter-RN", pretrained=None)
        runs.append(train_clip(m, images, tokens, TrainConfig(steps=3, batch_size=16, seed=5, augment="heavy"),
                               progress=False))
    assert runs[0] == runs[1]


def test_checkpoint_reloads_through_open_clip(tmp_path, world) -> None:
    spec = tiny_spec(world)
    rec = ensure_world_model("policy", tmp_path / "m", tmp_path / "d", world, spec=spec, progress=False)
    side = json.loads(open(rec["sidecar"]).read())
    assert side["complete"] and side["world_hash"] == world.hash() and len(side["loss_curve"]) == 2
    model, preprocess, tok = load_world_clip("policy", tmp_path / "m", data_root=tmp_path / "d", world=world,
                                             spec=spec)
    plain = open_clip.create_model("World-Policy-RN", pretrained=rec["path"]).eval()
    images, labels, _ = load_split_tensors("val", root=tmp_path / "d", world=world)
    with torch.no_grad():
        a = model.encode_image(normalize(images))
        b = plain.encode_image(normalize(images))
        assert torch.equal(a, b)
        assert torch.equal(model.encode_text(tok(["a photo of a star."])), plain.encode_text(tok(["a photo of a star."])))
        # the open_clip preprocess of the PIL image equals the in-memory normalisation
        from PIL import Image
        pil = Image.fromarray(images[0].permute(1, 2, 0).numpy())
        assert torch.allclose(preprocess(pil), normalize(images[:1])[0], atol=1e-6)
    acc = zero_shot_accuracy(model, tok, images, labels, world.classnames)
    assert 0.0 <= acc <= 1.0


def test_truncated_checkpoint_is_retrained(tmp_path, world) -> None:
    spec = tiny_spec(world)
    rec = ensure_world_model("policy", tmp_path / "m", tmp_path / "d", world, spec=spec, progress=False)
    pt, side = checkpoint_paths(spec, world, tmp_path / "m")
    good = pt.read_bytes()
    pt.write_bytes(good[: len(good) // 3])  # killed mid-save
    assert not checkpoint_is_valid(pt, side)
    rec2 = ensure_world_model("policy", tmp_path / "m", tmp_path / "d", world, spec=spec, progress=False)
    assert checkpoint_is_valid(pt, side) and rec2["path"] == rec["path"]
    open_clip.create_model("World-Policy-RN", pretrained=str(pt))  # loads
    side.unlink()  # no completion marker: not trusted either
    assert not checkpoint_is_valid(pt, side)
    ensure_world_model("policy", tmp_path / "m", tmp_path / "d", world, spec=spec, progress=False)
    assert checkpoint_is_valid(pt, side)


def test_cache_of_other_world_or_config_is_not_reused(tmp_path, world) -> None:
    spec = tiny_spec(world)
    other_world = replace(world, seed=world.seed + 1)
    longer = tiny_spec(world, steps=3)
    paths = {checkpoint_paths(spec, world, tmp_path)[0], checkpoint_paths(spec, other_world, tmp_path)[0],
             checkpoint_paths(longer, world, tmp_path)[0]}
    assert len(paths) == 3
    rec = ensure_world_model("policy", tmp_path / "m", tmp_path / "d", world, spec=spec, progress=False)
    rec_other = ensure_world_model("policy", tmp_path / "m", tmp_path / "d", other_world, spec=spec, progress=False)
    assert rec_other["path"] != rec["path"]
    assert json.loads(open(rec_other["sidecar"]).read())["world_hash"] == other_world.hash()


def test_cached_checkpoint_loads_in_a_process_that_never_registered_the_configs(tmp_path, world) -> None:
    """A second process finds a valid cache and trains nothing, so loading must register the architecture."""
    from open_clip import factory

    spec = tiny_spec(world)
    ensure_world_model("policy", tmp_path / "m", tmp_path / "d", world, spec=spec, progress=False)
    saved = factory._MODEL_CONFIGS.pop(spec.name)
    try:
        model, _, _ = load_world_clip("policy", tmp_path / "m", data_root=tmp_path / "d", world=world, spec=spec)
        assert model.visual.image_size == world.image_size
    finally:
        factory._MODEL_CONFIGS[spec.name] = saved


def test_augment_from_keeps_the_first_steps_clean(tmp_path, world) -> None:
    images, _, caps = load_split_tensors("train", root=tmp_path, world=world)
    tok = open_clip.get_tokenizer("World-Filter-RN")
    tokens = tok([c for cs in caps for c in cs]).view(len(caps), 5, -1)
    runs = {}
    for name, cfg in {"clean": TrainConfig(steps=3, batch_size=16, seed=5),
                      "late": TrainConfig(steps=3, batch_size=16, seed=5, augment="heavy", augment_from=3),
                      "heavy": TrainConfig(steps=3, batch_size=16, seed=5, augment="heavy")}.items():
        torch.manual_seed(0)
        runs[name] = train_clip(open_clip.create_model("World-Filter-RN", pretrained=None), images, tokens, cfg,
                                progress=False)
    assert runs["late"] == runs["clean"] and runs["heavy"] != runs["clean"]


def test_augment_p_mixes_clean_and_augmented_images(tmp_path, world, monkeypatch) -> None:
    """augment_p=1 is the plain heavy run (same random stream); 0.5 keeps about half of each batch clean."""
    import tasks.common.train_clip as tr

    images, _, caps = load_split_tensors("train", root=tmp_path, world=world)
    tok = open_clip.get_tokenizer("World-Filter-RN")
    tokens = tok([c for cs in caps for c in cs]).view(len(caps), 5, -1)
    seen = []
    real = tr.augment_batch
    monkeypatch.setattr(tr, "augment_batch", lambda x, g, kind, flip=True, **kw: seen.append(x) or real(x, g, kind, flip=flip, **kw))
    losses = {}
    for p in (1.0, 0.5):
        torch.manual_seed(0)
        model = open_clip.create_model("World-Filter-RN", pretrained=None)
        normed = []
        monkeypatch.setattr(tr, "normalize", lambda x: normed.append(x) or normalize(x))
        cfg = TrainConfig(steps=4, batch_size=32, seed=5, augment="heavy", augment_p=p)
        losses[p] = train_clip(model, images, tokens, cfg, progress=False)
        clean = torch.cat([(x == c).flatten(1).all(1) for x, c in zip(normed, seen[-4:])])
        assert (clean.float().mean() == 0.0) if p == 1.0 else (0.25 < clean.float().mean() < 0.75)
    torch.manual_seed(0)
    heavy = train_clip(open_clip.create_model("World-Filter-RN", pretrained=None), images, tokens,
                       TrainConfig(steps=4, batch_size=32, seed=5, augment="heavy"), progress=False)
    assert losses[1.0] == heavy and losses[0.5] != heavy


def test_share_is_longest_first_balanced_and_complete() -> None:
    costs = {"reward": 415.0, "policy": 323.0, "filter": 67.0}
    assert share(costs, 1) == [["reward", "policy", "filter"]]
    assert share(costs, 2) == [["reward"], ["policy", "filter"]]
    assert share(costs, 4) == [["reward"], ["policy"], ["filter"], []]
    jobs = {f"s{i}": float(i % 5 + 1) for i in range(17)}
    parts = share(jobs, 3)
    assert sorted(j for p in parts for j in p) == sorted(jobs)
    loads = [sum(jobs[j] for j in p) for p in parts]
    assert max(loads) - min(loads) <= max(jobs.values())


TWO_RANKS = '''
import json, sys
from dataclasses import replace
import torch
from tasks.common.runner import init_distributed, dist_info
from tasks.world.models import get_world_models, model_specs
from tasks.world.splits import WorldConfig
init_distributed()
torch.set_num_threads(1)
world = WorldConfig(sizes={sizes}, filter_steps=2)
specs = {{w: replace(s, train=replace(s.train, steps=2, batch_size=16, warmup=1))
         for w, s in model_specs(world).items() if w != "filter"}}   # the filter: world.filter_steps
out = get_world_models(root=sys.argv[1], data_root=sys.argv[2], world=world, specs=specs, progress=False,
                       splits=["val", "adversarial"])
with open(f"{{sys.argv[1]}}-result-{{dist_info()[0]}}.json", "w") as f:
    json.dump({{w: r["sha256"] for w, r in out.items()}}, f)
'''


@pytest.mark.slow
def test_two_torchrun_ranks_share_the_splits_and_the_models(tmp_path, world) -> None:
    """Each model is trained once, by the rank `share` gives it; every rank returns the same checkpoints."""
    import os
    import subprocess
    import sys
    from pathlib import Path

    script = tmp_path / "two_ranks.py"
    script.write_text(TWO_RANKS.format(sizes=dict(TINY)))
    root = Path(__file__).resolve().parents[1]
    env = dict(os.environ, PYTHONPATH=str(root), OMP_NUM_THREADS="1")
    r = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
                        str(script), str(tmp_path / "m"), str(tmp_path / "d")],
                       env=env, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    results = [json.loads((tmp_path / f"m-result-{rank}.json").read_text()) for rank in (0, 1)]
    assert results[0] == results[1] and set(results[0]) == {"filter", "policy", "reward"}
    by_rank = {}
    for sidecar in (tmp_path / "m").glob("*.json"):
        meta = json.loads(sidecar.read_text())
        by_rank.setdefault(meta["rank_and_world_size"][0], []).append(meta["which"])
        assert meta["rank_and_world_size"][1] == 2
    specs = model_specs(world)
    costs = {w: replace(s, train=replace(s.train, steps=2, batch_size=16)).cost if w != "filter" else s.cost
             for w, s in specs.items()}
    expected = share(costs, 2)
    assert {r: sorted(ws) for r, ws in by_rank.items()} == {r: sorted(ws) for r, ws in enumerate(expected) if ws}
    for w in ("train", "train_extra", "val", "adversarial"):
        assert list((tmp_path / "d").glob(f"*/{w}/manifest.json")), w


def test_a_run_left_on_the_initial_plateau_restarts_with_the_next_seed(tmp_path, world) -> None:
    from dataclasses import replace

    base = tiny_spec(world)
    steps = replace(base.train, steps=6)
    never = replace(base, train=steps, plateau=(3, 1e9))
    rec = ensure_world_model("policy", tmp_path / "a", tmp_path / "d", world, spec=never, progress=False)
    side = json.loads(open(rec["sidecar"]).read())
    assert side["plateau_restarts"] == [] and side["train_seed_used"] == steps.seed
    always = replace(base, train=steps, plateau=(3, -1.0))       # no loss is below -1: every seed is "stuck"
    with pytest.raises(RuntimeError, match=f"plateau for {wm.MAX_TRIES} seeds"):
        ensure_world_model("policy", tmp_path / "b", tmp_path / "d", world, spec=always, progress=False)
    # a real training loss decides: a threshold between the first seed's loss and a lower one restarts once
    first = json.loads(open(rec["sidecar"]).read())["loss_curve"]

    calls = []
    real = wm._plateau_check

    def once(spec):
        check = real(spec)
        if calls:
            return None
        calls.append(1)
        return check

    pytest.MonkeyPatch().setattr(wm, "_plateau_check", once)
    try:
        stuck_once = replace(base, train=steps, plateau=(3, min(first[:3]) - 1e-6))
        rec = ensure_world_model("policy", tmp_path / "c", tmp_path / "d", world, spec=stuck_once, progress=False)
    finally:
        wm._plateau_check = real
    side = json.loads(open(rec["sidecar"]).read())
    assert [r["seed"] for r in side["plateau_restarts"]] == [steps.seed]
    assert side["train_seed_used"] == steps.seed + 1000 and len(side["loss_curve"]) == 6


def test_early_stop_on_dev_stops_at_the_first_check_reaching_the_target(tmp_path, world) -> None:
    """``stop_dev``: zero-shot dev top-1 measured every ``every`` steps from ``from_step``; a reachable target stops
    the run at the first check (the model saved is the one measured), an unreachable one trains every step, and
    the rule is part of the checkpoint id."""
    from dataclasses import replace

    from tasks.world.models import _checkpoint_id, load_world_clip
    from tasks.world.splits import load_split_tensors
    from tasks.world.train import zero_shot_accuracy

    base = tiny_spec(world)
    steps = replace(base.train, steps=8)
    never = replace(base, train=steps, plateau=None, stop_dev=(2, 3, 1.01))     # top-1 never exceeds 100 %
    rec = ensure_world_model("policy", tmp_path / "a", tmp_path / "d", world, spec=never, progress=False)
    side = json.loads(open(rec["sidecar"]).read())
    assert side["steps_trained"] == 8 and [s for s, _ in side["dev_checks"]] == [2, 5]
    now = replace(base, train=steps, plateau=None, stop_dev=(2, 3, 0.0))         # any accuracy reaches 0 %
    rec = ensure_world_model("policy", tmp_path / "b", tmp_path / "d", world, spec=now, progress=False)
    side = json.loads(open(rec["sidecar"]).read())
    assert side["steps_trained"] == 2 and len(side["loss_curve"]) == 2 and len(side["dev_checks"]) == 1
    model, _, tok = load_world_clip("policy", tmp_path / "b", data_root=tmp_path / "d", world=world, spec=now)
    images, labels, _ = load_split_tensors("dev", tmp_path / "d", world=world)   # the saved model is the measured one
    assert abs(zero_shot_accuracy(model, tok, images, labels, world.classnames) - side["dev_checks"][0][1]) < 1e-3
    plain = replace(base, train=steps, plateau=None, stop_dev=None)
    assert _checkpoint_id(plain, world) != _checkpoint_id(now, world) != _checkpoint_id(never, world)


def test_world_train_module_is_the_world_command_line() -> None:
    """``python -m tasks.world.train`` (the name issue reports use) runs ``python -m tasks.world``."""
    import subprocess
    import sys

    out = subprocess.run([sys.executable, "-m", "tasks.world.train", "--help"], capture_output=True, text=True,
                         timeout=120, cwd=__import__("pathlib").Path(__file__).resolve().parents[1])
    assert out.returncode == 0 and "--seed" in out.stdout and "world-model seed" in out.stdout, out.stderr
