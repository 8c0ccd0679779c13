"""Retrieval task and CLI on tiny random models: gallery encoded once, both directions end to end,
zero-shot ranks equal the full score matrix, resume after a kill equals an uninterrupted run."""
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import make_clip
from test_retrieval_data import make_lavis

import tasks.common.clip as common_clip
import tasks.retrieval.task as rtask
from tasks.common.config import load_config
from tasks.common.runner import read_records
from tasks.retrieval.data import build_file_dataset
from tasks.retrieval.metrics import report_metrics
from tasks.retrieval.run import main

FIX = Path(__file__).resolve().parent / "fixtures"


@pytest.fixture(autouse=True)
def _one_thread():
    """Tiny models: one intra-op thread is faster, and much faster when the 2 shared cores are busy."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def cli_args(data_root: Path, out: Path, method: str = "rlcf", direction: str = "t2i/i2t",
             extra: tuple = ()) -> list[str]:
    return [f"method={method}", f"direction={direction}", "model.arch=RLCF-Tiny-Test", "model.pretrained=null",
            f"model.config_file={FIX / 'RLCF-Tiny-Test.json'}", "reward.arch=RLCF-Tiny-Reward",
            "reward.pretrained=null",
            f"reward.config_file={FIX / 'RLCF-Tiny-Reward.json'}", "data.dataset=coco", f"data.root={data_root}",
            "retrieval.k_t2i=4", "adapt.steps=2", "adapt.lr=1e-3", "run.workers=0", "run.device=cpu",
            f"run.out_dir={out}", *extra]


@pytest.fixture(scope="module")
def data_root(tmp_path_factory) -> Path:
    return make_lavis(tmp_path_factory.mktemp("ret"), "coco", n=8, caps=3)


@pytest.fixture
def counted(monkeypatch):
    """Count forward calls of each tower of every CLIP the task builds: ``calls[(arch, tower)]``."""
    calls: dict = {}
    original = rtask.build_clip

    def build(spec, device):
        model, pre, tok = original(spec, device)
        for tower in ("visual", "transformer"):
            key = (spec["arch"], tower)
            calls[key] = 0
            getattr(model, tower).register_forward_hook(lambda *a, key=key: calls.__setitem__(key, calls[key] + 1))
        return model, pre, tok

    monkeypatch.setattr(rtask, "build_clip", build)
    monkeypatch.setattr(common_clip, "build_clip", build)   # the reward models are built there
    return calls


def task_config(data_root: Path, direction: str, *extra: str) -> dict:
    return load_config(rtask.DEFAULTS, None, cli_args(data_root, data_root / "unused", direction=direction,
                                                       extra=extra))


def test_i2t_gallery_text_features_are_computed_once(data_root, counted):
    task = rtask.RetrievalTask.from_config(task_config(data_root, "i2t", "retrieval.gallery_batch=10"))
    P, R = "RLCF-Tiny-Test", "RLCF-Tiny-Reward"
    assert counted[(P, "transformer")] == 3            # 24 captions in batches of 10, policy text tower
    assert counted[(R, "transformer")] == 1            # reward caches its 24 caption features (its own batch 256)
    assert counted[(P, "visual")] == counted[(R, "visual")] == 0
    for i in range(3):
        rec = task.process(i, task.load(i))
        assert 0 <= rec["rank"] < 24 and len(rec["top"]) == 10 and len(rec["losses"]) == 2
    assert counted[(P, "transformer")] == 3 and counted[(R, "transformer")] == 1   # never again
    assert counted[(R, "visual")] == 3                 # the reward encodes each query image once


def test_t2i_gallery_image_features_are_computed_once_and_reward_reads_the_caption(data_root, counted, monkeypatch):
    task = rtask.RetrievalTask.from_config(task_config(data_root, "t2i", "retrieval.gallery_batch=3"))
    P, R = "RLCF-Tiny-Test", "RLCF-Tiny-Reward"
    assert counted[(P, "visual")] == counted[(R, "visual")] == 3    # 8 images in batches of 3, one pass
    assert counted[(P, "transformer")] == counted[(R, "transformer")] == 0
    seen = []
    member = task.method.reward
    original = member.encode_texts
    monkeypatch.setattr(member, "encode_texts", lambda q: (seen.append(list(q)), original(q))[1])
    for t in (0, 5, 23):
        sample = task.load(t)
        assert sample == task.data.texts[t]                             # the query is the caption itself
        rec = task.process(t, sample)
        assert rec["gt"] == [t // 3] and 0 <= rec["rank"] < 8
    assert seen == [[task.data.texts[t]] for t in (0, 5, 23)]          # raw captions, not token ids
    assert counted[(P, "visual")] == counted[(R, "visual")] == 3
    assert counted[(R, "transformer")] == 3                             # one caption encode per query
    assert task.method.config.k == 4 and task.method.config.eps == 1e-6 and task.method.config.steps == 2


def test_cli_both_directions_and_zeroshot_ranks_equal_the_full_score_matrix(data_root, tmp_path):
    out = tmp_path / "rlcf"
    res = main(cli_args(data_root, out))
    assert set(res) == {"t2i", "i2t"}
    results = json.loads((out / "results.json").read_text())["coco"]
    for k in ("txt_r1", "txt_r5", "txt_r10", "img_r1", "img_r5", "img_r10", "r_mean"):
        assert 0.0 <= results[k] <= 100.0
    assert results["runs"]["t2i"]["queries"] == 24 and results["runs"]["i2t"]["queries"] == 8
    assert len(read_records(out / "coco_t2i")) == 24 and (out / "coco_i2t" / "summary.md").is_file()
    assert {r["precision"] for d in ("coco_t2i", "coco_i2t") for r in read_records(out / d).values()} == {"fp32"}

    zs = tmp_path / "zeroshot"
    main(cli_args(data_root, zs, method="zeroshot", direction="i2t"))
    only_i2t = json.loads((zs / "results.json").read_text())["coco"]
    assert "r_mean" not in only_i2t and "img_r1" not in only_i2t         # only the direction that ran
    main(cli_args(data_root, zs, method="zeroshot", direction="t2i"))
    zres = json.loads((zs / "results.json").read_text())["coco"]
    data = build_file_dataset("coco", data_root)
    clip, pre, tok = make_clip("RLCF-Tiny-Test", 0)                     # the weights the CLI built (seed 0)
    with torch.no_grad():
        img = torch.nn.functional.normalize(clip.encode_image(torch.stack([pre(data.load_image(i)) for i in range(8)])))
        txt = torch.nn.functional.normalize(clip.encode_text(tok(data.texts)))
    s = (img @ txt.t()).numpy()
    ref = report_metrics(s, s.T, data.img2txt, data.txt2img)
    for k, v in ref.items():
        assert zres[k] == pytest.approx(v), k
    ranks = {i: r["rank"] for i, r in read_records(zs / "coco_i2t").items()}
    ref_ranks = [int(np.min([np.where(np.argsort(s[i], kind="stable")[::-1] == g)[0][0] for g in data.img2txt[i]]))
                 for i in range(8)]
    assert [ranks[i] for i in range(8)] == ref_ranks


def test_resume_after_kill_equals_uninterrupted_run(data_root, tmp_path):
    full, part = tmp_path / "full", tmp_path / "part"
    main(cli_args(data_root, full, direction="i2t", extra=("adapt.steps=1",)))
    main(cli_args(data_root, part, direction="i2t", extra=("adapt.steps=1", "run.limit=3")))
    with open(part / "coco_i2t" / "records-0.jsonl", "a") as f:
        f.write('{"index": 5, "ra')                                        # killed mid-write
    main(cli_args(data_root, part, direction="i2t", extra=("adapt.steps=1",)))
    lines = (part / "coco_i2t" / "records-0.jsonl").read_text().splitlines()
    assert len(lines) == 8 and len({json.loads(x)["index"] for x in lines}) == 8

    def strip(recs):
        return {i: (r["rank"], r["top"]) for i, r in recs.items()}

    assert strip(read_records(part / "coco_i2t")) == strip(read_records(full / "coco_i2t"))
    assert json.loads((part / "results.json").read_text())["coco"]["txt_r1"] == \
        json.loads((full / "results.json").read_text())["coco"]["txt_r1"]


def test_official_configs_and_the_rlcf_s_m_options(data_root):
    cfgs = {n: load_config(rtask.DEFAULTS, Path(__file__).resolve().parents[1] / "configs" / "retrieval" / f"{n}.yaml")
            for n in ("coco", "coco-rlcf-s", "coco-rlcf-s-m", "flickr", "zero-shot")}
    a = cfgs["coco"]["adapt"]
    official = (8, 1e-6, 1e-6, 5e-4, 1.0, None)
    assert (a["steps"], a["lr"], a["eps"], a["weight_decay"], a["selection"], a["k"]) == official
    assert cfgs["coco"]["retrieval"]["k_i2t"] == 20 and cfgs["flickr"]["retrieval"]["k_i2t"] == 16
    assert cfgs["flickr"]["data"]["dataset"] == "flickr30k" and cfgs["flickr"]["retrieval"]["k_t2i"] == 12
    assert [m["confidence"] for m in cfgs["coco-rlcf-s"]["reward"]["ensemble"]] == [10, 3, 5]
    assert cfgs["coco-rlcf-s-m"]["adapt"]["momentum"] == 0.9998 and cfgs["coco-rlcf-s-m"]["adapt"]["update_freq"] == 64
    assert cfgs["zero-shot"]["method"] == "zeroshot"
    # RLCF-S-M on tiny models: reward ensemble (gallery cached in every member) + momentum reset point
    member = {"arch": "RLCF-Tiny-Reward", "pretrained": None, "config_file": str(FIX / "RLCF-Tiny-Reward.json")}
    cfg = task_config(data_root, "t2i", "adapt.momentum=0.9998", "adapt.update_freq=2")
    cfg["reward"]["ensemble"] = [dict(member, confidence=10), dict(member, confidence=5)]
    task = rtask.RetrievalTask.from_config(cfg)
    ens = task.method.reward
    assert task.online and task.method.momentum is not None and ens.weights == [0.67, 0.33]
    assert all(m.candidate_feats.shape == (8, 48) for m in ens.rewards)
    recs = [task.process(t, task.load(t)) for t in range(2)]
    assert all(r["flags"] == [] for r in recs) and task.method.momentum.count == 2
