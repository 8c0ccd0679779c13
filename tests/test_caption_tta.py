"""Caption RLCF through the core method: only the mapper moves, the LM gets no gradient, exact reset,
deterministic captions, per-sample records with candidates and rewards (tiny models, CPU)."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

import rlcf
from tasks.captioning.checkpoint import tiny_captioner
from tasks.captioning.data import CaptionItem
from tasks.captioning.metrics import ClipScorer
from tasks.captioning.policy import CaptionPolicy
from tasks.captioning.task import CaptionTask

CAPTIONS = ["a photo of a red circle.", "a blue square on a green background.", "two stars in the picture.",
            "a small yellow triangle."]


@pytest.fixture(autouse=True)
def _one_thread():
    torch.set_num_threads(1)


@pytest.fixture
def policy(tiny_clip):
    clip = tiny_clip[0]
    cap = tiny_captioner(CAPTIONS, prefix_dim=32, hidden=32, heads=2, seed=0, max_new_tokens=8)
    return CaptionPolicy(cap, clip)


class LengthReward:
    """A stand-in reward that always separates the candidates (a random tiny CLIP gives all of them 0)."""

    def __call__(self, query, candidates):
        self.query = query
        return torch.tensor([[len(t) / 10.0 for t in row] for row in candidates])


def _make(policy, reward):
    # a large lr so that one step visibly changes the (tiny) mapper
    return rlcf.create_method("rlcf", policy, reward, steps=2, lr=1e-2, weight_decay=0.0, eps=1e-6, k=3,
                              selection=1.0)


@pytest.fixture
def method(policy):
    return _make(policy, LengthReward())


def _image(seed=0):
    return torch.randn(1, 3, 32, 32, generator=torch.Generator().manual_seed(seed))


def test_policy_is_generative_and_only_mapper_trainable(policy, method):
    assert isinstance(policy, rlcf.Policy) and not isinstance(policy, rlcf.DiscretePolicy)
    names = set(policy.trainable_parameters())
    assert names == {f"captioner.mapper.{n}" for n, _ in policy.captioner.mapper.named_parameters()}
    assert len(method.params) == len(list(policy.captioner.mapper.parameters()))


def test_one_step_moves_only_the_mapper(policy):
    method = rlcf.create_method("rlcf", policy, LengthReward(), steps=1, lr=1e-2, weight_decay=0.0, eps=1e-6, k=3,
                                selection=1.0)
    before = {n: p.detach().clone() for n, p in policy.named_parameters()}
    reset, adapted = method.reset, {}
    method.reset = lambda: adapted.update({n: p.detach().clone() for n, p in policy.named_parameters()}) or reset()
    with torch.no_grad():
        method(_image())
    assert all(p.grad is None for p in policy.captioner.lm.parameters())
    assert all(p.grad is None for p in policy.clip_model.parameters())
    for n in before:
        changed = not torch.equal(adapted[n], before[n])
        assert changed == n.startswith("captioner.mapper."), n
    texts = method.last_info["candidates"][0]
    assert len(texts) == 1 and len(texts[0]) == 3 and len(set(method.last_info["rewards"][0][0])) > 1
    assert all(torch.equal(p, before[n]) for n, p in policy.named_parameters())


def test_tta_restores_exactly_and_is_deterministic(policy, method):
    state = {k: v.clone() for k, v in policy.state_dict().items()}
    img = _image(1)
    first = method(img)
    assert isinstance(first, str)
    info = method.last_info
    assert len(info["candidates"]) == 2 and len(info["rewards"]) == 2 and len(info["losses"]) == 2
    assert all(len(step[0]) == 3 for step in info["candidates"])
    assert all(0.0 <= r <= 2.5 for step in info["rewards"] for r in step[0])
    for k, v in policy.state_dict().items():
        assert torch.equal(v, state[k]), k
    assert method(img) == first
    assert all(p.grad is None for p in policy.parameters())


def test_caption_task_records_and_summary(tmp_path, policy, reward_clip, tiny_clip):
    from tasks.common.runner import run

    method = _make(policy, rlcf.CLIPReward(reward_clip[0], reward_clip[2]))

    items = [CaptionItem(f"img{i}.jpg", str(i), [CAPTIONS[i], CAPTIONS[(i + 1) % 4]]) for i in range(3)]
    scorer = ClipScorer(tiny_clip[0], tiny_clip[2])
    task = CaptionTask(method, items, lambda i: _image(i)[0], scorer, zero_shot=True,
                       metric_options={"tokenizer": "simple", "meteor": False, "spice": False})
    summary = run(task, tmp_path, workers=0)
    recs = [json.loads(line) for line in (tmp_path / "records-0.jsonl").read_text().splitlines()]
    assert [r["id"] for r in recs] == ["0", "1", "2"]
    assert {r["precision"] for r in recs} == {"fp32"}                  # amp auto is fp32 on CPU, and says so
    r = recs[0]
    assert isinstance(r["caption"], str) and isinstance(r["caption_zeroshot"], str)
    assert len(r["candidates"]) == 2 and len(r["candidates"][0]) == 3
    assert len(r["rewards"]) == 2 and len(r["rewards"][0]) == 3
    assert 0 <= r["clip_s"] <= 2.5 and r["refclip_s"] is not None
    m = summary["metrics"]
    for key in ("CIDEr", "BLEU-4", "ROUGE-L", "CLIPScore", "RefCLIPScore", "vocab_size", "self_BLEU-4",
                "zeroshot/CIDEr", "zeroshot/CLIPScore", "mean_reward/step0", "mean_reward/step1"):
        assert key in m, key
    assert m["tokenizer"] == "simple"
    assert (tmp_path / "summary.md").is_file()


def _tiny_cli_run(tmp_path: Path) -> list[str]:
    """A fabricated LAVIS file of 2 images, a tiny captioner checkpoint and tiny CLIPs: the CLI overrides of a
    tiny caption TTA run on them (add ``run.out_dir``)."""
    from PIL import Image

    from tasks.captioning.checkpoint import captioner_state, save_atomic

    fixtures = Path(__file__).parent / "fixtures"
    (tmp_path / "images").mkdir()
    ann = []
    for i in range(2):
        Image.new("RGB", (40, 30), (60 * i, 100, 200)).save(tmp_path / "images" / f"{i}.jpg")
        ann.append({"image": f"{i}.jpg", "caption": [CAPTIONS[i], CAPTIONS[i + 1]]})
    (tmp_path / "test.json").write_text(json.dumps(ann))
    cap = tiny_captioner(CAPTIONS, prefix_dim=32, hidden=32, heads=2, seed=0, max_new_tokens=6)
    save_atomic({"model": captioner_state(cap)}, tmp_path / "ckpt.pt")
    clips = []
    for name in ("model", "reward", "eval"):
        arch = "RLCF-Tiny-Reward" if name == "reward" else "RLCF-Tiny-Test"
        clips += [f"{name}.arch={arch}", f"{name}.pretrained=null", f"{name}.config_file={fixtures / (arch + '.json')}"]
    return [f"captioner.checkpoint={tmp_path / 'ckpt.pt'}", f"data.annotations={tmp_path / 'test.json'}",
            f"data.images_root={tmp_path / 'images'}", "adapt.k=3", "adapt.steps=1", "captioner.max_new_tokens=6",
            "eval.meteor=false", "run.workers=0", "run.device=cpu", *clips]


def test_tta_cli_end_to_end_on_files(tmp_path):
    """``python -m tasks.captioning.run`` on a fabricated LAVIS file, tiny CLIPs and a tiny checkpoint."""

    from tasks.captioning.run import main

    out = tmp_path / "out"
    args = [*_tiny_cli_run(tmp_path), "eval.tokenizer=simple", f"run.out_dir={out}"]
    summary = main(["--config", str(Path(__file__).parents[1] / "configs/captioning/clipcap-c2f.yaml"), *args])
    assert summary["n"] == 2 and summary["errors"] == 0
    assert {"CIDEr", "CLIPScore", "RefCLIPScore", "zeroshot/CIDEr"} <= set(summary["metrics"])
    caps = json.loads((out / "captions.json").read_text())
    assert [c["image_id"] for c in caps] == ["0", "1"]
    assert set(json.loads((out / "clipscore_candidates.json").read_text())) == {"0", "1"}
    assert (out / "config.yaml").is_file() and (out / "summary.md").is_file()


def test_tta_console_has_no_third_party_info_and_says_each_thing_once(tmp_path, caplog, capfd):
    """The console of one caption TTA CLI run: project INFO lines only (no open_clip / transformers INFO), no
    repeated message (the SPICE-skipped line once and short, though the metrics run twice: adapted and zero-shot),
    no Java tool chatter, no DataLoader worker warning (workers are capped to the cores)."""
    import logging
    import shutil
    from collections import Counter


    from tasks.captioning.run import main

    args = [*_tiny_cli_run(tmp_path), f"run.out_dir={tmp_path / 'out'}"]
    caplog.set_level(logging.DEBUG)
    with pytest.warns() as warned:
        import warnings

        warnings.warn("sentinel", UserWarning)   # pytest.warns needs one; the run's own are checked below
        summary = main(["--config", str(Path(__file__).parents[1] / "configs/captioning/clipcap-c2f.yaml"), *args])
    assert summary["n"] == 2
    shown = [r for r in caplog.records if r.levelno >= logging.getLogger(r.name).getEffectiveLevel()]
    third_party_info = [(r.name, r.getMessage()) for r in shown if r.levelno < logging.WARNING
                        and r.name.split(".")[0] not in ("tasks", "rlcf")]
    assert third_party_info == []
    counts = Counter(r.getMessage() for r in shown)
    assert [m for m, c in counts.items() if c > 1] == []
    spice = [m for m in counts if "SPICE" in m]
    assert len(spice) <= 1 and all(len(m) < 160 for m in spice)
    assert not [str(w.message) for w in warned if "worker processes" in str(w.message)]
    err = capfd.readouterr().err
    assert "PTBTokenizer tokenized" not in err
    if shutil.which("java"):
        assert summary["metrics"]["tokenizer"] == "ptb"
