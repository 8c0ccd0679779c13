"""What the command lines promise on the console (issue 25, items 4 and 6), checked on real processes
(``python -m ...``, where a module's logger is ``__main__``): every training command line logs its first step, every
``--log-every`` steps, ``resumed from ... at step N`` and ``done``; caption TTA prints its table; ``--help`` shows
defaults and config keys; ``rlcf train-clip`` resumes after ``kill -9`` to the weights of an uninterrupted run."""
from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from conftest import FIXTURES
from tasks.command import main as rlcf_main

REPO = Path(__file__).resolve().parents[1]
ENV = {"PYTHONPATH": str(REPO), "PATH": os.environ.get("PATH", "/usr/bin:/bin"), "OMP_NUM_THREADS": "1",
       "HOME": os.environ.get("HOME", "/tmp")}


def _py(*args: str, cwd: Path, timeout: int = 300) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, *args], capture_output=True, text=True, cwd=cwd, env=ENV, timeout=timeout)


def _steps(stderr: str) -> list[int]:
    """The step numbers of the ``step N/T (...)`` log lines."""
    return [int(m) for m in re.findall(r"INFO \S+: step (\d+)/\d+ \(", stderr)]


def _images(folder: Path, n: int, size: int = 40) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    out = []
    for i in range(n):
        arr = (rng.random((size, size, 3)) * 120).astype("uint8")
        arr[..., i % 3] += 120
        Image.fromarray(arr).save(folder / f"{i}.png")
        out.append(folder / f"{i}.png")
    return out


def test_caption_training_logs_its_steps_resume_and_done(tmp_path, tiny_clip):
    from standins import CAPTIONS, opt_folder

    torch.save(tiny_clip[0].state_dict(), tmp_path / "clip.pt")
    opt_folder(tmp_path / "lm")
    (tmp_path / "images" / "train2014").mkdir(parents=True)
    ann = []
    for i, f in enumerate(_images(tmp_path / "images" / "train2014", 4)):
        ann += [{"image": f"train2014/{f.name}", "caption": CAPTIONS[i], "image_id": str(i)}]
    (tmp_path / "train.json").write_text(json.dumps(ann))
    args = ["-m", "tasks.captioning.train", "--annotations", str(tmp_path / "train.json"), "--images-root",
            str(tmp_path / "images"), "--clip-arch", "RLCF-Tiny-Test", "--clip-weights", str(tmp_path / "clip.pt"),
            "--clip-config", str(FIXTURES / "RLCF-Tiny-Test.json"), "--lm", str(tmp_path / "lm"), "--out-dir",
            str(tmp_path / "out"), "--device", "cpu", "--workers", "0", "--epochs", "3", "--batch-size", "2",
            "--warmup", "1", "--prefix-length", "2", "--clip-length", "2", "--num-layers", "1", "--num-heads", "2",
            "--stop-token", "eos", "--log-every", "2"]                     # 2 steps per epoch, 6 in all
    first = _py(*args, "--max-steps", "3", cwd=tmp_path)
    assert first.returncode == 0, first.stderr[-3000:]
    assert _steps(first.stderr) == [1, 2, 3] and "done: " in first.stderr   # first, every 2nd, the last of this run
    again = _py(*args, cwd=tmp_path)
    assert again.returncode == 0, again.stderr[-3000:]
    assert re.search(r"resumed from \S+ckpt-latest.pt at step 3", again.stderr), again.stderr[-3000:]
    assert _steps(again.stderr) == [4, 6] and "done: " in again.stderr and "'steps': 3" in again.stderr


def test_caption_rl_training_logs_its_steps_resume_and_done(tmp_path):
    from test_caption_rl_cli import _mini_set

    d = tmp_path / "mini"
    _mini_set(d)
    tiny, rew = FIXTURES / "RLCF-Tiny-Test.json", FIXTURES / "RLCF-Tiny-Reward.json"
    args = ["-m", "tasks.caption_rl.train", "--recipe", "gt_contrastive", f"captioner.checkpoint={d / 'captioner.pt'}",
            "captioner.lm=null", "captioner.max_new_tokens=6", "captioner.stop_token=null", "model.arch=RLCF-Tiny-Test",
            "model.pretrained=null", f"model.config_file={tiny}", "reward.arch=RLCF-Tiny-Reward",
            "reward.pretrained=null", f"reward.config_file={rew}", f"data.annotations={d / 'train.json'}",
            f"data.images_root={d / 'images'}", f"data.feature_dir={tmp_path / 'feat'}", "eval.enabled=false",
            "gt.disc_pretrain.steps=0", "gt.decoding.policy.num_beams=2", "gt.decoding.policy.max_new_tokens=6",
            "gt.decoding.baseline.max_new_tokens=6", "optim.batch_size=4", "optim.log_every=2",
            f"run.out_dir={tmp_path / 'run'}", "run.workers=0", "run.device=cpu"]
    first = _py(*args, "optim.steps=3", cwd=tmp_path)
    assert first.returncode == 0, first.stderr[-3000:]
    assert _steps(first.stderr) == [1, 2, 3] and "done: " in first.stderr
    again = _py(*args, "optim.steps=5", cwd=tmp_path)
    assert again.returncode == 0, again.stderr[-3000:]
    assert re.search(r"resumed from \S+rl-latest.pt at step 3", again.stderr), again.stderr[-3000:]
    assert _steps(again.stderr) == [4, 5] and "done: " in again.stderr


def _train_clip_args(tmp_path: Path, out: str, steps: int) -> list[str]:
    files = _images(tmp_path / "imgs", 12, size=36)
    colours = ["red", "green", "blue"]
    (tmp_path / "train.csv").write_text("path,caption\n" + "".join(
        f"imgs/{f.name},a {colours[i % 3]} square\n" for i, f in enumerate(files)))
    (tmp_path / "MyTiny.json").write_text((FIXTURES / "RLCF-Tiny-Test.json").read_text())
    return ["-m", "tasks.train_clip", "--data", str(tmp_path / "train.csv"), "--config",
            str(tmp_path / "MyTiny.json"), "--out", str(tmp_path / out), "--steps", str(steps), "--batch-size", "4",
            "--augment", "heavy", "--augment-p", "0.5", "--augment-from", "3", "--save-every", "5", "--log-every", "5"]


def test_train_clip_resumes_after_kill_9_to_the_uninterrupted_weights(tmp_path):
    """A ``kill -9`` in the middle of ``rlcf train-clip`` loses nothing: the rerun resumes from the last state file and
    ends with the weights of an uninterrupted run, bit for bit; both print the promised lines."""
    steps = 150
    full = _py(*_train_clip_args(tmp_path, "full", steps), cwd=tmp_path)
    assert full.returncode == 0, full.stderr[-3000:]
    logged = _steps(full.stderr)
    assert logged[0] == 1 and logged[1:] == list(range(5, steps + 1, 5)) and "done: 150 steps" in full.stderr
    killed = subprocess.Popen([sys.executable, *_train_clip_args(tmp_path, "killed", steps)], cwd=tmp_path, env=ENV,
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    state = tmp_path / "killed" / "MyTiny-latest.pt"
    t0 = time.time()
    while not state.is_file() and killed.poll() is None and time.time() - t0 < 240:
        time.sleep(0.02)
    os.kill(killed.pid, signal.SIGKILL)
    killed.wait()
    assert killed.returncode == -signal.SIGKILL and not (tmp_path / "killed" / "MyTiny.pt").exists()
    at = torch.load(state, weights_only=False)["step"]
    assert 0 < at < steps
    again = _py(*_train_clip_args(tmp_path, "killed", steps), cwd=tmp_path)
    assert again.returncode == 0, again.stderr[-3000:]
    m = re.search(r"resumed from (\S+) at step (\d+)", again.stderr)
    assert m and m.group(1) == str(state) and int(m.group(2)) >= at
    assert _steps(again.stderr)[0] == int(m.group(2)) + 1 and "done: 150 steps" in again.stderr
    a, b = torch.load(tmp_path / "full" / "MyTiny.pt"), torch.load(tmp_path / "killed" / "MyTiny.pt")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    # other settings in the same folder: one line, nothing touched, two ways on
    before = {p.name: p.read_bytes() for p in (tmp_path / "killed").iterdir() if p.is_file()}
    other = _py(*_train_clip_args(tmp_path, "killed", steps), "--lr", "0.01", cwd=tmp_path)
    assert other.returncode == 2 and len(other.stderr.strip().splitlines()) == 1, other.stderr
    assert "lr" in other.stderr and "--out" in other.stderr and "--restart" in other.stderr
    assert {p.name: p.read_bytes() for p in (tmp_path / "killed").iterdir() if p.is_file()} == before


def test_world_caption_demo_logs_as_a_module(tmp_path):
    """``python -m tasks.captioning.world_demo`` (its logger is ``__main__``) says what it did: the captioner's
    training steps, the lr chosen on dev, the result and where it went; ``--resume`` says where it resumed."""
    script = (
        "import runpy, sys\n"
        "import tasks.world.splits as s\n"
        "build = s.build_world_dataset\n"
        "small = s.WorldConfig(sizes={**s.WorldConfig().sizes, 'train': 48, 'sketch': 4, 'dev': 4})\n"
        "s.build_world_dataset = lambda split, root, world=None, **k: build(split, root, world=small, **k)\n"
        "sys.argv = ['world_demo'] + sys.argv[1:]\n"
        "runpy.run_module('tasks.captioning.world_demo', run_name='__main__')\n")
    clip, reward = str(FIXTURES / "RLCF-Tiny-Test.json"), str(FIXTURES / "RLCF-Tiny-Reward.json")
    args = ["-c", script, "--out-dir", str(tmp_path / "out"), "--n-train", "48", "--n-test", "2", "--n-dev", "2",
            "--epochs", "2", "--k", "2", "--steps", "1", "--lr-grid", "1e-4,1e-3", "--policy-clip", clip,
            "--reward-clip", reward, "--eval-clip", clip, "--test-split", "sketch", "--data-root", str(tmp_path / "w"),
            "--tokenizer", "simple"]
    first = _py(*args, cwd=tmp_path)
    assert first.returncode == 0, first.stderr[-3000:]
    for line in (r"__main__: captioner trained: 8 steps", r"__main__: dev sweep \(CIDEr after TTA\)",
                 r"__main__: world caption demo: CIDEr .* \(\S+results.md\)"):
        assert re.search(line, first.stderr), (line, first.stderr[-3000:])
    assert _steps(first.stderr) == [1, 8]                  # 48 images x their captions, batch 64: 4 steps an epoch
    again = _py(*args, "--resume", cwd=tmp_path)
    assert again.returncode == 0 and re.search(r"resumed from \S+ckpt-latest.pt at step 8", again.stderr)


def test_one_logging_set_up_covers_modules_run_as_main():
    """``python -m x`` logs through ``logging.getLogger("__main__")``: the shared set-up gives it INFO, as the
    project's loggers, and keeps third-party INFO quiet."""
    import logging

    from tasks.common.cli import setup_logging

    setup_logging()
    assert logging.getLogger("__main__").isEnabledFor(logging.INFO)
    assert logging.getLogger("tasks.captioning.train").isEnabledFor(logging.INFO)
    assert not logging.getLogger("transformers").isEnabledFor(logging.INFO)


# ------------------------------------------------------------------------------------------------ --help
def _help(argv: list[str], capsys) -> str:
    assert rlcf_main(argv) == 0
    return capsys.readouterr().out


@pytest.mark.parametrize("argv,module", [(["run", "classification"], "tasks.classification.task"),
                                         (["run", "retrieval"], "tasks.retrieval.task"),
                                         (["run", "captioning"], "tasks.captioning.task"),
                                         (["run", "caption-rl"], "tasks.caption_rl.config"),
                                         (["check", "classification"], "tasks.classification.task"),
                                         (["check", "captioning"], "tasks.captioning.task"),
                                         (["diagnose"], "tasks.classification.diagnose")])
def test_help_lists_every_config_key_with_its_default_and_meaning(argv, module, capsys):
    import importlib

    from tasks.common.config import _flat_keys

    out = _help([*argv, "--help"], capsys)
    mod = importlib.import_module(module)
    lines = {ln.split(" = ", 1)[0].strip(): ln for ln in out.splitlines() if " = " in ln and ln.startswith("  ")}
    defaults = mod.defaults() if hasattr(mod, "defaults") else mod.DEFAULTS   # caption RL: recipes add sections
    for key, value in _flat_keys(defaults):
        assert key in lines, key
        shown, meaning = lines[key].split(" = ", 1)[1].split("  ", 1) if "  " in lines[key].split(" = ", 1)[1] \
            else (lines[key].split(" = ", 1)[1], "")
        assert len(meaning.strip()) > 3, (key, lines[key])                   # a one-line meaning
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            assert float(shown) == float(value), (key, shown)               # the default
    assert "base: other.yaml" in out
    if argv == ["run", "classification"]:   # the keys the newcomer had to find in the code
        for key, default in (("model.config_file", "null"), ("prompt.class_template", "null"), ("run.workers", "2"),
                             ("run.shuffle_seed", "null")):
            assert lines[key].split(" = ", 1)[1].startswith(default + "  "), lines[key]


def test_train_clip_help_shows_defaults_and_what_the_presets_do(capsys):
    out = _help(["train-clip", "--help"], capsys)
    flat = " ".join(out.split("options:", 1)[1].split())
    for option, default in (("--steps", "600"), ("--batch-size", "128"), ("--lr", "0.001"), ("--augment", "light"),
                            ("--augment-p", "1.0"), ("--augment-from", "0"), ("--save-every", "100")):
        assert re.search(rf"{option} \S+ .*?\(default: {re.escape(default)}\)", flat), option
    assert "light  random resized crop" in out and "heavy  light, then colour jitter" in out and "no rotation" in out


def test_caption_train_help_shows_the_recipe_defaults(capsys):
    out = " ".join(_help(["run", "caption-train", "--help"], capsys).split("options:", 1)[1].split())
    for option, default in (("--epochs", "10"), ("--lr", "2e-05"), ("--batch-size", "40"), ("--warmup", "5000"),
                            ("--log-every", "100")):
        assert re.search(rf"{option} \S+ .*?\(default: {re.escape(default)}\)", out), option


def test_label_aware_with_a_caption_list_is_refused_when_parsed(tmp_path, capsys, monkeypatch):
    import tasks.train_clip as tc

    (tmp_path / "list.csv").write_text("path,caption\nx.png,a cat\n")
    monkeypatch.setattr(tc, "load_training_data", lambda *a, **k: pytest.fail("images were loaded"))
    rc = rlcf_main(["train-clip", "--data", str(tmp_path / "list.csv"), "--config", str(FIXTURES / "RLCF-Tiny-Test.json"),
                    "--out", str(tmp_path / "out"), "--label-aware"])
    err = capsys.readouterr().err
    assert rc == 2 and err.count("\n") == 1 and "--label-aware" in err and "folder of class folders" in err
    assert not (tmp_path / "out").exists()


def test_unknown_architecture_names_near_matches_first():
    from tasks.common.clip import ModelNameError, load_clip

    with pytest.raises(ModelNameError) as e:
        load_clip("ViT-B-61")
    msg = str(e.value)
    near = msg.split("Did you mean ", 1)[1].split("?", 1)[0].split(", ")
    assert "ViT-B-16" in near and len(near) <= 5 and msg.index("Did you mean") < msg.index("all ")
    with pytest.raises(ModelNameError, match="Did you mean ViT-L-14"):
        load_clip("vit-l-14")
