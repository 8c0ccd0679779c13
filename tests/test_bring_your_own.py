"""Your own models and data through the ``rlcf`` command (README "Bring your own model and data").

Tiny stand-ins are built in a temporary folder: a folder dataset (3 classes x 4 images) and the same images as
a CSV list, two HF CLIP folders (``save_pretrained``) where the README expects them, and two open_clip
checkpoints. Checked: the README's commands run as written and print the table it shows; a folder dataset and a
list dataset run with an HF policy and an open_clip reward and the reverse, each with records, resume and
``summary.md``; the reward re-normalises the policy's views; the pre-flight check and the fingerprint of HF
folders; the ``rlcf`` command's sub-commands and errors.
"""
from __future__ import annotations

import json
import re
import shlex
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import rlcf
from conftest import FIXTURES, make_clip, save_tiny_hf
from tasks.command import main as rlcf_main
from tasks.common.clip import checkpoint_problems, load_clip, weights_fingerprint
from tasks.common.data import UserError

pytest.importorskip("transformers")

REPO = Path(__file__).resolve().parents[1]
README = REPO / "README.md"
CONFIG = "configs/classification/byo-hf-encoder.yaml"
CLASSES = {"cat": (200, 60, 60), "dog": (60, 200, 60), "tree_frog": (60, 60, 200)}
FAST = ["views.n=8", "run.workers=0", "run.device=cpu"]


@pytest.fixture(scope="module")
def world(tmp_path_factory) -> Path:
    """A user's folder: ``mydata/<class>/*.jpg``, ``mydata.csv``, HF and open_clip models, the repo's configs."""
    root = tmp_path_factory.mktemp("byo")
    rng = np.random.default_rng(0)
    rows = ["path,label"]
    for name, colour in CLASSES.items():
        (root / "mydata" / name).mkdir(parents=True)
        for i in range(4):
            pixels = (rng.normal(0, 30, (40, 48, 3)) + colour).clip(0, 255).astype("uint8")
            Image.fromarray(pixels).save(root / "mydata" / name / f"{i:03d}.jpg")
            rows.append(f"mydata/{name}/{i:03d}.jpg,{name}")
    (root / "mydata.csv").write_text("\n".join(rows) + "\n")
    save_tiny_hf(root / "pretrained/hf/clip-vit-base-patch16", "clip", seed=0)
    save_tiny_hf(root / "pretrained/hf/clip-vit-large-patch14", "clip", seed=1)
    for name, seed in (("RLCF-Tiny-Test", 0), ("RLCF-Tiny-Reward", 1)):
        model, _, _ = make_clip(name, seed)
        torch.save(model.state_dict(), root / f"{name}.pt")
    (root / "configs").symlink_to(REPO / "configs")
    return root


def _readme_section() -> str:
    text = README.read_text(encoding="utf-8")
    return text[text.index("## Bring your own model and data"):text.index("## Batched episodes")]


def _records(folder: Path) -> list[dict]:
    return [json.loads(line) for f in sorted(folder.glob("records-*.jsonl")) for line in f.read_text().splitlines()]


def test_readme_commands_run_and_print_its_table(world, monkeypatch, capsys):
    monkeypatch.chdir(world)
    section = _readme_section()
    bash = re.search(r"```bash\n(.*?)```", section, flags=re.S).group(1)
    commands = [line for line in bash.splitlines() if line.startswith("rlcf ")]
    assert [shlex.split(c)[1] for c in commands] == ["check", "run", "run"]
    for command in commands:
        assert rlcf_main(shlex.split(command)[1:] + ["run.workers=0"] * (" run " in command)) == 0
    out = capsys.readouterr().out
    shown = re.search(r"```text\n(.*?)```", section, flags=re.S).group(1).splitlines()
    printed = [line for line in out.splitlines() if line.startswith("|")]
    assert printed[:2] == shown[:2] and printed[3:5] == shown[:2]        # the same header, twice (two runs)
    zs, rl = printed[2].split("|"), printed[5].split("|")
    # a set of your own is named by its folder (data.root=mydata), not "folder"
    assert zs[1:5] == [" mydata ", " zeroshot ", " encoder ", " 12 "] and rl[1:5] == shown[2].split("|")[1:5]
    assert (world / "output/mydata/results.md").read_text().splitlines() == printed[3:6]
    assert len(_records(world / "output/mydata/folder")) == 12
    assert (world / "output/mydata/folder/summary.md").is_file()


@pytest.mark.parametrize("case", ["folder-hf-policy-open_clip-reward", "list-open_clip-policy-hf-reward"])
def test_own_data_and_models_run_resume_and_summarise(world, monkeypatch, case, capsys):
    monkeypatch.chdir(world)
    hf = ["hf:pretrained/hf/clip-vit-base-patch16", "null", "null"]
    oc = ["RLCF-Tiny-Reward", str(world / "RLCF-Tiny-Reward.pt"), str(FIXTURES / "RLCF-Tiny-Reward.json")]
    if case.startswith("folder"):
        data, policy, reward, kind = ["data.set_id=folder", "data.root=mydata"], hf, oc, "encoder"
    else:
        data, kind = ["data.set_id=list", "data.file=mydata.csv"], "prompt"
        policy = ["RLCF-Tiny-Test", str(world / "RLCF-Tiny-Test.pt"), str(FIXTURES / "RLCF-Tiny-Test.json")]
        reward = ["hf:pretrained/hf/clip-vit-large-patch14", "null", "null"]
    models = [f"{side}.{k}={v}" for side, spec in (("model", policy), ("reward", reward))
              for k, v in zip(("arch", "pretrained", "config_file"), spec)]
    out = world / "output" / case
    argv = ["run", "classification", "--config", CONFIG, *data, *models, f"policy={kind}", f"run.out_dir={out}",
            "adapt.lr=0.01", *FAST]
    assert rlcf_main([*argv, "run.limit=5"]) == 0
    set_dir = out / data[0].split("=")[1]
    first = _records(set_dir)
    assert len(first) == 5
    assert rlcf_main(argv) == 0                                          # resumes: the 5 done are kept as they are
    records = _records(set_dir)
    assert len(records) == 12 and {r["id"] for r in first} <= {r["id"] for r in records}
    by_id = {r["id"]: r for r in records}
    assert all(by_id[r["id"]] == r for r in first)
    assert not any(r.get("error") for r in records)
    assert {r["label"] for r in records} == {0, 1, 2}
    summary = json.loads((set_dir / "summary.json").read_text())
    assert summary["n"] == 12 and summary["errors"] == 0 and 0 <= summary["metrics"]["top1"] <= 100
    assert "| top1 |" in (set_dir / "summary.md").read_text()
    fingerprint = json.loads((set_dir / "fingerprint.json").read_text())
    side = "model" if case.startswith("folder") else "reward"
    assert len(fingerprint["weights"][side]) == 64                      # the HF folder's hash is part of it
    label = "mydata" if case.startswith("folder") else "mydata.csv"       # the folder's / the list file's name
    assert f"| {label} | rlcf | {kind} | 12 |" in capsys.readouterr().out


def test_a_changed_hf_folder_changes_the_fingerprint(world, tmp_path):
    folder = tmp_path / "m"
    save_tiny_hf(folder, "clip", seed=0)
    cfg = {"model": {"arch": f"hf:{folder}"}, "reward": {"arch": "RLCF-Tiny-Reward", "pretrained": None}}
    before = weights_fingerprint(cfg)["model"]
    assert before == weights_fingerprint(cfg)["model"]
    save_tiny_hf(folder, "clip", seed=5)                               # other weights at the same path
    assert weights_fingerprint(cfg)["model"] != before


def test_missing_hf_folder_is_named_by_the_check_and_the_loader(world, monkeypatch, capsys):
    monkeypatch.chdir(world)
    cfg = {"method": "rlcf", "model": {"arch": "hf:pretrained/hf/nowhere"},
           "reward": {"arch": "hf:pretrained/hf/clip-vit-large-patch14", "ensemble": None}}
    problems = checkpoint_problems(cfg)
    assert len(problems) == 1 and "policy model" in problems[0] and "pretrained/hf/nowhere" in problems[0]
    rc = rlcf_main(["check", "classification", "--config", CONFIG, "model.arch=hf:pretrained/hf/nowhere"])
    assert rc == 1 and "pretrained/hf/nowhere" in capsys.readouterr().err
    with pytest.raises(UserError, match="hf download"):
        load_clip("hf:pretrained/hf/nowhere")
    with pytest.raises(UserError, match="leave pretrained unset"):
        load_clip("hf:pretrained/hf/clip-vit-base-patch16", "x.pt")
    model, _, _ = load_clip("hf:pretrained/hf/clip-vit-base-patch16", precision="bf16")
    assert next(model.parameters()).dtype == torch.bfloat16
    rc = rlcf_main(["run", "classification", "--config", CONFIG, "model.arch=hf:pretrained/hf/nowhere", *FAST])
    err = capsys.readouterr().err                                         # a run: one line, exit code 2
    assert rc == 2 and err.count("\n") == 1 and "pretrained/hf/nowhere" in err


def test_reward_renormalises_the_policys_views(world):
    """A reward with other mean / std than the policy's sees the pixels it expects."""
    policy, _, _ = load_clip(f"hf:{world}/pretrained/hf/clip-vit-base-patch16")
    reward_model, _, tok = make_clip("RLCF-Tiny-Reward", 1)
    reward_model.visual.image_mean, reward_model.visual.image_std = (0.5, 0.5, 0.5), (0.5, 0.5, 0.5)
    g = torch.Generator().manual_seed(0)
    pixels = torch.rand(3, 3, 32, 32, generator=g)                         # [0, 1] images
    mean_p, std_p = (torch.tensor(v).view(1, 3, 1, 1) for v in (policy.visual.image_mean, policy.visual.image_std))
    as_policy = (pixels - mean_p) / std_p
    as_reward = (pixels - 0.5) / 0.5
    matched = rlcf.CLIPReward(reward_model, tok, input_norm=rlcf.reward.input_norm(policy))
    plain = rlcf.CLIPReward(reward_model, tok)
    assert torch.allclose(matched.encode_images(as_policy), plain.encode_images(as_reward), atol=1e-5)
    assert not torch.allclose(plain.encode_images(as_policy), plain.encode_images(as_reward), atol=1e-3)
    same = rlcf.CLIPReward(reward_model, tok, input_norm=((0.5,) * 3, (0.5,) * 3))
    assert same._renorm is None                                           # equal norms: nothing is touched


def test_rlcf_command_lists_methods_and_refuses_bad_input(capsys):
    assert rlcf_main(["methods"]) == 0
    out = capsys.readouterr().out
    for name in rlcf.list_methods():
        assert re.search(rf"^{name}\s+(episodic|online)\s+(yes|no)\s+\d+\s+\S", out, flags=re.M), name
    assert re.search(r"^tda\s+online", out, flags=re.M) and re.search(r"^rlcf\s+episodic\s+yes", out, flags=re.M)
    assert rlcf_main(["run", "nosuchtask"]) == 2 and "choose from classification" in capsys.readouterr().err
    assert rlcf_main(["run"]) == 2 and "caption-rl" in capsys.readouterr().out
    assert rlcf_main(["run", "classification", "data.bogus=1"]) == 2
    assert "unknown config key 'data.bogus'" in capsys.readouterr().err


def test_one_template_for_prompt_and_encoder_policies(tiny_clip):
    from tasks.classification.policies import EncoderPolicy, PromptPolicy, class_prompts

    clip, _, tok = tiny_clip
    names = ["cat", "tree_frog"]
    template = "a sketch of a {}."
    by_template = PromptPolicy(clip, names, tok, template=template)
    by_words = PromptPolicy(clip, names, tok, ctx_init="a sketch of a")
    assert torch.equal(by_template.ctx, by_words.ctx) and by_template.n_ctx == 4
    enc = EncoderPolicy(clip, names, tok, template=template)
    # before any step the prompt policy's classifier is the encoder policy's: the same texts
    assert torch.allclose(by_template.class_features(), enc.class_features(), atol=1e-5)
    assert class_prompts(names, template) == ["a sketch of a cat.", "a sketch of a tree frog."]
    with pytest.raises(ValueError, match="<words> \\{\\}."):
        PromptPolicy(clip, names, tok, template="{} in a sketch")
