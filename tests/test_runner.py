"""Runner: resume after a kill equals an uninterrupted run, torchrun sharding, bad images, config."""
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from tasks.common.config import apply_overrides, load_config
from tasks.common.runner import read_records, run

ROOT = Path(__file__).resolve().parents[1]
FIX = ROOT / "tests" / "fixtures"
CLASSES = ["banded", "blotchy", "braided"]


def make_dtd(root: Path, per_class: int = 3, corrupt: int | None = None) -> Path:
    """A miniature DTD in the CoOp layout: dtd/images/<class>/*.jpg + dtd/split_zhou_DescribableTextures.json."""
    rng = np.random.default_rng(0)
    test = []
    for c, name in enumerate(CLASSES):
        d = root / "dtd" / "images" / name
        d.mkdir(parents=True, exist_ok=True)
        for k in range(per_class):
            arr = (rng.random((20, 24, 3)) * 255).astype("uint8")
            arr[..., c] = 255  # a class-dependent colour so the task is not pure noise
            Image.fromarray(arr).save(d / f"{name}_{k}.jpg")
            test.append([f"{name}/{name}_{k}.jpg", c, name])
    if corrupt is not None:
        bad = root / "dtd" / "images" / test[corrupt][0]
        bad.write_bytes(b"not a jpeg")
    (root / "dtd" / "split_zhou_DescribableTextures.json").write_text(json.dumps({"train": [], "val": [], "test": test}))
    return root


def cli_args(data_root: Path, out: Path, method: str = "rlcf", extra: tuple = ()) -> list[str]:
    return [f"method={method}", "policy=prompt", "model.arch=RLCF-Tiny-Test", "model.pretrained=null",
            f"model.config_file={FIX / 'RLCF-Tiny-Test.json'}", "reward.arch=RLCF-Tiny-Reward",
            "reward.pretrained=null", f"reward.config_file={FIX / 'RLCF-Tiny-Reward.json'}",
            "data.set_id=DTD", f"data.root={data_root}", "data.classnames=json", "views.n=8", "views.augmix=false",
            "adapt.selection=0.25", "adapt.lr=0.05", "run.workers=0", "run.device=cpu", f"run.out_dir={out}", *extra]


def run_cli(args: list[str], env_extra: dict | None = None, torchrun: int = 0) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONPATH=str(ROOT), OMP_NUM_THREADS="1", **(env_extra or {}))
    if torchrun:
        cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={torchrun}",
               "-m", "tasks.classification.run", *args]
    else:
        cmd = [sys.executable, "-m", "tasks.classification.run", *args]
    return subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)


def preds(out: Path) -> dict:
    return {i: (r.get("pred"), r.get("top5"), r.get("error") is not None) for i, r in read_records(out).items()}


def test_resume_after_kill_equals_uninterrupted_run_and_bad_image_is_recorded(tmp_path):
    data = make_dtd(tmp_path / "data", corrupt=4)
    from tasks.classification.run import main

    full = tmp_path / "full"
    main(cli_args(data, full))
    records = read_records(full / "DTD")
    assert len(records) == 9 and "error" in records[4] and "pred" in records[0]
    summary = json.loads((full / "DTD" / "summary.json").read_text())
    assert summary["n"] == 9 and summary["errors"] == 1 and 0 <= summary["metrics"]["top1"] <= 100

    # simulate a kill: a run limited to 5 samples, then a half-written line
    part = tmp_path / "part"
    main(cli_args(data, part, extra=("run.limit=5",)))
    with open(part / "DTD" / "records-0.jsonl", "a") as f:
        f.write('{"index": 7, "pre')
    main(cli_args(data, part))
    lines = (part / "DTD" / "records-0.jsonl").read_text().splitlines()
    assert len(lines) == 9 and len({json.loads(x)["index"] for x in lines}) == 9   # no duplicate, none missing
    assert preds(part / "DTD") == preds(full / "DTD")


@pytest.mark.slow
def test_torchrun_two_processes_equal_single_process(tmp_path):
    data = make_dtd(tmp_path / "data")
    single, sharded = tmp_path / "single", tmp_path / "sharded"
    r1 = run_cli(cli_args(data, single))
    assert r1.returncode == 0, r1.stderr[-2000:]
    r2 = run_cli(cli_args(data, sharded), torchrun=2)
    assert r2.returncode == 0, r2.stderr[-3000:]
    assert sorted(p.name for p in (sharded / "DTD").glob("records-*.jsonl")) == ["records-0.jsonl", "records-1.jsonl"]
    assert preds(sharded / "DTD") == preds(single / "DTD")
    s1 = json.loads((single / "DTD" / "summary.json").read_text())["metrics"]
    s2 = json.loads((sharded / "DTD" / "summary.json").read_text())["metrics"]
    assert s1["top1"] == s2["top1"] and s1["top5"] == s2["top5"]


def test_online_task_refuses_sharding(tmp_path, monkeypatch):
    class Online:
        online = True
        def __len__(self): return 2
    monkeypatch.setenv("WORLD_SIZE", "2")
    with pytest.raises(RuntimeError, match="online"):
        run(Online(), tmp_path)


def test_config_overrides_are_type_checked():
    d = {"a": {"lr": 1e-3, "steps": 3, "name": "x", "amp": None}, "flag": False}
    cfg = apply_overrides(d, ["a.lr=5e-3", "a.steps=1", "a.amp=bf16", "flag=true"])
    assert cfg["a"] == {"lr": 5e-3, "steps": 1, "name": "x", "amp": "bf16"} and cfg["flag"] is True
    with pytest.raises(KeyError, match="valid keys"):
        apply_overrides(d, ["a.lrr=1"])
    with pytest.raises(TypeError, match="expects int"):
        apply_overrides(d, ["a.steps=abc"])
    with pytest.raises(FileNotFoundError):
        load_config(d, "nope.yaml")
    assert apply_overrides(d, ["a.name={} here"])["a"]["name"] == "{} here"     # not YAML: taken as text
    for bad in ("a.amp=[1, 2}", "a.amp=[1, 2", "a=[1", "a={n: 3"):          # a broken list / mapping says so
        with pytest.raises(ValueError, match="not valid YAML"):
            apply_overrides(d, [bad])
    with pytest.raises(TypeError, match="is a dict"):
        apply_overrides(d, ["a=text"])


def test_method_options_go_in_adapt_options():
    """A method's own options are ``adapt.options``; any other ``adapt`` key is unknown and the error lists the valid
    ones."""
    from tasks.classification.task import DEFAULTS
    from tasks.common.config import ConfigKeyError

    with pytest.raises(ConfigKeyError, match=r"'adapt.extra'; valid keys here: \[.*'options'"):
        load_config(DEFAULTS, None, ["adapt.extra=50"])
    assert load_config(DEFAULTS, None, ["adapt.options.ctpt_lambda=50"])["adapt"]["options"] == {"ctpt_lambda": 50}


def test_records_of_another_configuration_are_never_mixed_in(tmp_path):
    """Rerunning into the same out_dir with another lr: an error naming the key (CLI), or a fresh start."""
    data = make_dtd(tmp_path / "data")
    from tasks.classification.run import main

    out = tmp_path / "out"
    main(cli_args(data, out, extra=("run.limit=4",)))
    main(cli_args(data, out, extra=("run.workers=0", "run.limit=6")))   # bookkeeping keys: resumes
    assert len(read_records(out / "DTD")) == 6
    with pytest.raises(RuntimeError, match="adapt.lr"):
        main(cli_args(data, out, extra=("adapt.lr=0.5",)))
    assert len(read_records(out / "DTD")) == 6   # nothing was touched


def test_on_change_restart_discards_stale_records(tmp_path):
    class Count:
        online = False
        def __init__(self): self.seen = []
        def __len__(self): return 3
        def sample_id(self, i): return str(i)
        def load(self, i): return i
        def process(self, i, sample):
            self.seen.append(i)
            return {"value": sample}
        def summarize(self, records): return {"n": len(records)}

    run(Count(), tmp_path, fingerprint={"adapt": {"lr": 1.0}})
    same = Count()
    run(same, tmp_path, fingerprint={"adapt": {"lr": 1.0}})
    assert same.seen == []                                       # resumed: everything was recorded
    other = Count()
    run(other, tmp_path, fingerprint={"adapt": {"lr": 2.0}}, on_change="restart")
    assert other.seen == [0, 1, 2] and len(read_records(tmp_path)) == 3
    assert json.loads((tmp_path / "fingerprint.json").read_text()) == {"adapt": {"lr": 2.0}}


def test_run_fingerprint_names_the_weights(tmp_path):
    """A config names checkpoints by path (the world's `pretrained/world/policy.pt` too); the records depend on
    the bytes there, so their SHA-256 goes in: a retrained model at the same path restarts its records."""
    import hashlib
    import time

    from tasks.common.clip import run_fingerprint

    pol, rew = tmp_path / "policy.pt", tmp_path / "reward.pt"
    pol.write_bytes(b"policy weights"); rew.write_bytes(b"reward weights")
    cfg = {"model": {"arch": "World-Policy-RN", "pretrained": str(pol)},
           "reward": {"arch": "World-Reward-RN", "pretrained": str(rew)}, "adapt": {"lr": 1e-4},
           "run": {"out_dir": "x", "seed": 0}, "data": {"root": "/d", "set_id": "world/val"}}
    fp = run_fingerprint(cfg)
    assert fp["weights"] == {"model": hashlib.sha256(b"policy weights").hexdigest(),
                             "reward": hashlib.sha256(b"reward weights").hexdigest()}
    assert fp["run"] == {"seed": 0} and fp["data"] == {"set_id": "world/val"}
    time.sleep(0.01)
    pol.write_bytes(b"retrained policy")          # retrained policy: another fingerprint
    assert run_fingerprint(cfg) != fp
    cfg_tag = {**cfg, "model": {"arch": "ViT-B-16", "pretrained": "openai"}}   # a tag: named by the config itself
    assert run_fingerprint(cfg_tag)["weights"] == {"reward": fp["weights"]["reward"]}


def test_batched_run_writes_the_records_of_an_unbatched_one_also_after_a_kill(tmp_path):
    """run.batch=4 (B samples adapted at once, each with its own prompt) gives the records of run.batch=1
    (a corrupt image stays an error record alone), and a killed batched run resumes to the same records."""
    data = make_dtd(tmp_path / "data", corrupt=4)
    from tasks.classification.run import main

    lr = ("adapt.lr=5e-3",)
    one, four, part = tmp_path / "one", tmp_path / "four", tmp_path / "part"
    main(cli_args(data, one, extra=lr))
    main(cli_args(data, four, extra=lr + ("run.batch=4",)))
    assert preds(four / "DTD") == preds(one / "DTD")
    r1, r4 = read_records(one / "DTD"), read_records(four / "DTD")
    assert all(r1[i].get("confidence") == pytest.approx(r4[i].get("confidence"), abs=1e-5) for i in r1)
    assert "error" in r4[4] and all("error" not in r4[i] for i in r4 if i != 4)
    main(cli_args(data, part, extra=lr + ("run.batch=4", "run.limit=5")))
    with open(part / "DTD" / "records-0.jsonl", "a") as f:
        f.write('{"index": 7, "pre')                     # killed in the middle of a write
    main(cli_args(data, part, extra=lr + ("run.batch=auto",)))
    lines = (part / "DTD" / "records-0.jsonl").read_text().splitlines()
    assert len(lines) == 9 and len({json.loads(x)["index"] for x in lines}) == 9
    assert preds(part / "DTD") == preds(one / "DTD")
    with pytest.raises(ValueError, match="run.batch"):
        run(type("T", (), {"online": False, "__len__": lambda s: 1, "sample_id": lambda s, i: "x",
                           "load": lambda s, i: 0, "process_batch": lambda s, i, x: [{}]})(), tmp_path / "bad",
            batch=0)


class _Squares:
    """A tiny picklable task: sample i is i * i."""

    online = False

    def __init__(self, n: int) -> None:
        self.n = n

    def __len__(self) -> int:
        return self.n

    def sample_id(self, i: int) -> str:
        return str(i)

    def load(self, i: int) -> int:
        return i * i

    def process(self, i: int, sample: int) -> dict:
        return {"value": sample}

    def summarize(self, records: list[dict]) -> dict:
        return {"total": sum(r["value"] for r in records)}


def test_loader_workers_never_exceed_the_cores_nor_the_configured_value(monkeypatch):
    from tasks.common import data

    monkeypatch.setattr(data.os, "sched_getaffinity", lambda pid: {0, 1}, raising=False)
    assert [data.loader_workers(w) for w in (None, 0, -1, 1, 2, 4, 16)] == [0, 0, 0, 1, 2, 2, 2]
    assert data.available_cpus() == 2


def test_runner_starts_no_more_workers_than_cores(tmp_path, monkeypatch):
    """run.workers=4 on one available core: one DataLoader worker, no "N worker processes ... suggested max"
    warning, the same records as in-process loading."""
    import warnings

    import torch.utils.data as tud

    import tasks.common.runner as runner

    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0}, raising=False)
    started = []
    real = tud.DataLoader

    def spy(*a, **kw):
        started.append(kw.get("num_workers"))
        return real(*a, **kw)

    monkeypatch.setattr(runner, "DataLoader", spy)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        summary = run(_Squares(5), tmp_path / "w", workers=4)
    assert started == [1] and summary["metrics"]["total"] == 30
    assert not [w for w in caught if "worker" in str(w.message)]
    assert run(_Squares(5), tmp_path / "z", workers=0)["metrics"] == summary["metrics"]


def test_online_tda_run_killed_and_resumed_equals_an_uninterrupted_one(tmp_path):
    """TDA carries caches across the stream: a resumed run replays the recorded samples (in the stream's
    shuffled order) to rebuild them before going on, so its records equal an uninterrupted run's. Not vacuous:
    TDA's confidences differ from zero-shot's, so the caches it carries change the records."""
    data = make_dtd(tmp_path / "data", per_class=4)
    from tasks.classification.run import main

    tda = ["--config", str(ROOT / "configs" / "classification" / "tda.yaml")]   # official stream: shuffled, seed 1
    full, part = tmp_path / "full", tmp_path / "part"
    main(tda + cli_args(data, full, method="tda", extra=("policy=encoder",)))
    main(tda + cli_args(data, part, method="tda", extra=("policy=encoder", "run.limit=7")))
    with open(part / "DTD" / "records-0.jsonl", "a") as f:
        f.write('{"index": 3, "pre')                     # killed in the middle of a write
    main(tda + cli_args(data, part, method="tda", extra=("policy=encoder",)))
    lines = (part / "DTD" / "records-0.jsonl").read_text().splitlines()
    assert len(lines) == 12 and len({json.loads(x)["index"] for x in lines}) == 12
    r_full, r_part = read_records(full / "DTD"), read_records(part / "DTD")
    assert preds(part / "DTD") == preds(full / "DTD")
    assert all(r_full[i]["confidence"] == pytest.approx(r_part[i]["confidence"], abs=1e-6) for i in r_full)
    zs = tmp_path / "zs"
    main(cli_args(data, zs, method="zeroshot", extra=("policy=encoder", "encoder.ensemble=true", "data.templates=simple",
                                                         "adapt.steps=0")))
    r_zs = read_records(zs / "DTD")
    assert any(r_zs[i]["confidence"] != pytest.approx(r_full[i]["confidence"], abs=1e-6) for i in r_full)
