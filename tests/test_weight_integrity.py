"""Damaged weight files (issue 25, items 1 and 5): every task's pre-flight probes every weight file the run will read,
so a truncated or corrupt open_clip state dict, OpenAI TorchScript archive, safetensors file or captioner checkpoint
is one line naming the file, what is wrong and how to get it again (exit code 2), before any model is loaded; a load
that still fails says the same. OpenAI's TorchScript checkpoints load through ``load_clip`` as policy and reward with
the features of the state-dict route."""
from __future__ import annotations

import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import rlcf
from conftest import FIXTURES, make_clip, save_tiny_hf
from standins import CAPTIONS, captioner_checkpoint, corrupt, openai_torchscript, opt_folder, truncated
from tasks.command import main as rlcf_main
from tasks.common.clip import build_clip, build_reward, load_clip
from tasks.common.preflight import DamagedFileError, probe, reading

REPO = Path(__file__).resolve().parents[1]
TINY = ["RLCF-Tiny-Test", None, str(FIXTURES / "RLCF-Tiny-Test.json")]
REWARD = ["RLCF-Tiny-Reward", None, str(FIXTURES / "RLCF-Tiny-Reward.json")]


@pytest.fixture(scope="module")
def good(tmp_path_factory) -> dict:
    """Whole weight files of each kind, a folder dataset, a caption set and a list of captions."""
    root = tmp_path_factory.mktemp("weights")
    out: dict = {"root": root}
    out["ts"], out["ts_sd"], out["ts_json"] = openai_torchscript(root / "openai")
    model, _, _ = make_clip("RLCF-Tiny-Test", 0)
    torch.save(model.state_dict(), root / "tiny.pt")
    out["sd"] = root / "tiny.pt"
    out["hf"] = save_tiny_hf(root / "hf-clip", "clip", seed=0)
    out["opt"] = opt_folder(root / "opt")
    out["ckpt"] = captioner_checkpoint(root / "captioner.pt", out["opt"], prefix_dim=32)
    rng = np.random.default_rng(0)
    rows, ann = ["path,caption"], []
    for c, name in enumerate(("cat", "dog")):
        (root / "imgs" / name).mkdir(parents=True)
        for i in range(2):
            arr = (rng.random((32, 32, 3)) * 255).astype("uint8")
            Image.fromarray(arr).save(root / "imgs" / name / f"{i}.png")
            rows.append(f"imgs/{name}/{i}.png,a photo of a {name}")
            ann.append({"image": f"{name}/{i}.png", "caption": [CAPTIONS[i], CAPTIONS[c]], "image_id": f"{name}{i}"})
    (root / "list.csv").write_text("\n".join(rows) + "\n")
    (root / "captions.json").write_text(json.dumps(ann))
    coco = [{"image": a["image"], "caption": c, "image_id": a["image_id"]} for a in ann for c in a["caption"]]
    (root / "coco_train.json").write_text(json.dumps(coco))
    return out


def _spec(side: str, arch: str, pretrained, config) -> list[str]:
    return [f"{side}.arch={arch}", f"{side}.pretrained={'null' if pretrained is None else pretrained}",
            f"{side}.config_file={'null' if config is None else config}"]


def _policy(kind: str, path: Path, g: dict) -> list[str]:
    """The policy-CLIP overrides that make a run read ``path`` (a damaged file of ``kind``)."""
    if kind == "state_dict":
        return _spec("model", "RLCF-Tiny-Test", path, FIXTURES / "RLCF-Tiny-Test.json")
    if kind == "torchscript":
        return _spec("model", "TinyOpenAI", path, g["ts_json"])
    return _spec("model", f"hf:{path}", None, None)   # safetensors: a Hugging Face CLIP folder


def classification(g: dict, tmp: Path, kind: str, path: Path) -> list[str]:
    return ["run", "classification", "method=rlcf", "policy=encoder", *_policy(kind, path, g), *_spec("reward", *REWARD),
            "data.set_id=folder", f"data.root={g['root'] / 'imgs'}", "views.n=4", "run.workers=0", "run.device=cpu",
            f"run.out_dir={tmp / 'out'}"]


def retrieval(g: dict, tmp: Path, kind: str, path: Path) -> list[str]:
    return ["run", "retrieval", "method=rlcf", *_policy(kind, path, g), *_spec("reward", *REWARD), "data.dataset=list",
            f"data.annotations={g['root'] / 'list.csv'}", "run.workers=0", "run.device=cpu", f"run.out_dir={tmp / 'out'}"]


def captioning(g: dict, tmp: Path, kind: str, path: Path) -> list[str]:
    ckpt, lm = g["ckpt"], g["opt"]
    model = _spec("model", *TINY)
    if kind == "captioner":
        ckpt = path
    elif kind == "safetensors":   # the OPT folder the checkpoint reads
        lm = path
    else:
        model = _policy(kind, path, g)
    return ["run", "captioning", f"captioner.checkpoint={ckpt}", f"captioner.lm={lm}", *model, *_spec("reward", *REWARD),
            *_spec("eval", *TINY), f"data.annotations={g['root'] / 'captions.json'}",
            f"data.images_root={g['root'] / 'imgs'}", "run.workers=0", "run.device=cpu", f"run.out_dir={tmp / 'out'}"]


def caption_train(g: dict, tmp: Path, kind: str, path: Path) -> list[str]:
    clip = ["--clip-arch", "RLCF-Tiny-Test", "--clip-weights", str(g["sd"]), "--clip-config",
            str(FIXTURES / "RLCF-Tiny-Test.json")]
    lm, out = g["opt"], tmp / "out"
    if kind == "state_dict":
        clip[3] = str(path)
    elif kind == "torchscript":
        clip = ["--clip-arch", "TinyOpenAI", "--clip-weights", str(path), "--clip-config", str(g["ts_json"])]
    elif kind == "safetensors":
        lm = path
    else:   # the run's own resume checkpoint
        out.mkdir(parents=True, exist_ok=True)
        shutil.copy(path, out / "ckpt-latest.pt")
    return ["run", "caption-train", "--annotations", str(g["root"] / "coco_train.json"), "--images-root",
            str(g["root"] / "imgs"), *clip, "--lm", str(lm), "--out-dir", str(out), "--device", "cpu", "--workers", "0"]


def caption_rl(g: dict, tmp: Path, kind: str, path: Path) -> list[str]:
    ckpt, lm = g["ckpt"], g["opt"]
    model = _spec("model", "RLCF-Tiny-Test", g["sd"], FIXTURES / "RLCF-Tiny-Test.json")
    if kind == "captioner":
        ckpt = path
    elif kind == "safetensors":
        lm = path
    else:
        model = _policy(kind, path, g)
    return ["run", "caption-rl", "--recipe", "gt_contrastive", f"captioner.checkpoint={ckpt}", f"captioner.lm={lm}",
            *model, *_spec("reward", *REWARD), f"data.annotations={g['root'] / 'coco_train.json'}",
            f"data.images_root={g['root'] / 'imgs'}", "eval.enabled=false", f"data.feature_dir={tmp / 'features'}",
            "run.device=cpu", "run.workers=0", f"run.out_dir={tmp / 'out'}"]


def train_clip(g: dict, tmp: Path, kind: str, path: Path) -> list[str]:
    out = tmp / "out"
    out.mkdir(parents=True, exist_ok=True)
    shutil.copy(path, out / "MyTiny-latest.pt")   # the state of a killed run, damaged
    cfg = tmp / "MyTiny.json"
    cfg.write_text((FIXTURES / "RLCF-Tiny-Test.json").read_text())
    return ["train-clip", "--data", str(g["root"] / "list.csv"), "--config", str(cfg), "--out", str(out), "--steps",
            "2", "--batch-size", "2"]


TASKS = {"classification": (classification, ("state_dict", "torchscript", "safetensors")),
         "retrieval": (retrieval, ("state_dict", "torchscript", "safetensors")),
         "captioning": (captioning, ("state_dict", "torchscript", "safetensors", "captioner")),
         "caption-train": (caption_train, ("state_dict", "torchscript", "safetensors", "captioner")),
         "caption-rl": (caption_rl, ("state_dict", "torchscript", "safetensors", "captioner")),
         "train-clip": (train_clip, ("train_state",))}
CASES = [(t, k, how) for t, (_, kinds) in TASKS.items() for k in kinds for how in ("truncated", "corrupt")]


def _source(g: dict, kind: str, tmp: Path) -> Path:
    if kind == "train_state":   # a train-clip state file (torch.save zip), as a killed run leaves one
        path = tmp / "state.pt"
        torch.save({"format": "rlcf-train-clip/1", "step": 1, "model": torch.load(g["sd"])}, path)
        return path
    return {"state_dict": g["sd"], "torchscript": g["ts"], "safetensors": g["hf"], "captioner": g["ckpt"]}[kind]


@pytest.fixture
def no_model_loads(monkeypatch):
    """Every model builder the tasks use raises: a damaged file must be named before any of them runs."""
    import open_clip
    import transformers

    loaded: list[str] = []

    def refuse(name):
        def f(*a, **k):
            loaded.append(name)
            raise AssertionError(f"{name} was called before the damaged file was named")
        return f

    for name in ("create_model_and_transforms", "create_model", "load_openai_model"):
        monkeypatch.setattr(open_clip, name, refuse(f"open_clip.{name}"))
    for cls in (transformers.OPTForCausalLM, transformers.CLIPModel):
        monkeypatch.setattr(cls, "from_pretrained", refuse(f"{cls.__name__}.from_pretrained"))
    return loaded


@pytest.mark.parametrize("task,kind,how", CASES, ids=[f"{t}-{k}-{h}" for t, k, h in CASES])
def test_a_damaged_weight_file_is_one_line_before_any_model_loads(good, tmp_path, capsys, no_model_loads, task,
                                                                  kind, how):
    src = _source(good, kind, tmp_path)
    bad = (truncated if how == "truncated" else corrupt)(src, tmp_path / f"{how}-{src.name}")
    argv = TASKS[task][0](good, tmp_path, kind, bad)
    rc = rlcf_main(argv)
    err = capsys.readouterr().err
    assert rc == 2, err
    assert err.count("\n") == 1 and err.startswith("error: "), err              # one line
    if bad.is_dir():
        named = bad / "model.safetensors"
    elif task == "train-clip":
        named = tmp_path / "out" / "MyTiny-latest.pt"
    elif task == "caption-train" and kind == "captioner":
        named = tmp_path / "out" / "ckpt-latest.pt"          # the run's own resume checkpoint
    else:
        named = bad
    assert f"'{named}' is damaged" in err, err                                   # the path, and that it is damaged
    assert ("truncated" in err) if how == "truncated" else ("damaged:" in err or "not a PyTorch" in err or
                                                           "truncated or damaged" in err), err
    assert "Get it again: " in err, err                                         # how to get it again
    assert no_model_loads == []


def test_probe_reads_structure_not_tensors(tmp_path):
    """Whole files pass; each kind of damage is named; an HTML page saved as a checkpoint says so."""
    sd = tmp_path / "sd.pt"
    torch.save({"w": torch.randn(300, 300)}, sd)
    legacy = tmp_path / "legacy.pt"
    torch.save({"w": torch.randn(300, 300)}, legacy, _use_new_zipfile_serialization=False)
    from safetensors.torch import save_file

    st = tmp_path / "m.safetensors"
    save_file({"w": torch.randn(300, 300)}, st)
    assert probe(sd) is None and probe(legacy) is None and probe(st) is None
    assert "end-of-archive" in probe(truncated(sd))
    assert "truncated" in probe(truncated(st)) and "of the" in probe(truncated(st))
    assert "damaged" in probe(corrupt(sd)) and "damaged" in probe(corrupt(st))
    assert probe(truncated(legacy, fraction=0.0001)).startswith("truncated or damaged pickle")
    (tmp_path / "page.pt").write_text("<!DOCTYPE html><html>rate limited</html>")
    assert "HTML" in probe(tmp_path / "page.pt")
    (tmp_path / "empty.pt").write_bytes(b"")
    assert "empty" in probe(tmp_path / "empty.pt")
    index = tmp_path / "model.safetensors.index.json"
    index.write_text(json.dumps({"weight_map": {"w": "m.safetensors", "v": "gone.safetensors"}}))
    assert "gone.safetensors" in probe(index)


def test_a_load_that_still_fails_is_one_line_naming_the_file(tmp_path):
    """Damage past what the probe reads (a legacy checkpoint cut inside its tensor bytes) fails where the file is
    opened, as the same one line."""
    legacy = tmp_path / "legacy.pt"
    torch.save({"w": torch.randn(300, 300)}, legacy, _use_new_zipfile_serialization=False)
    cut = truncated(legacy, fraction=0.9)
    assert probe(cut) is None                       # the pickles are whole: the probe cannot see it
    with pytest.raises(DamagedFileError) as e:
        with reading(cut, "reward CLIP checkpoint", "download it again"):
            torch.load(cut)
    msg = str(e.value)
    assert f"'{cut}' is damaged" in msg and "download it again" in msg and "\n" not in msg
    with pytest.raises(ValueError, match="unrelated"):   # other errors are not mistaken for damage
        with reading(cut, "x"):
            raise ValueError("unrelated")


# ------------------------------------------------------------------------------------------ OpenAI TorchScript
def test_openai_torchscript_loads_as_policy_and_reward_with_the_state_dict_features(good, tmp_path):
    """``load_clip`` on OpenAI's TorchScript layout (``open_clip.load_openai_model``) gives the model of the
    state-dict route, as a policy (``build_clip``) and as a reward (``build_reward``); a truncated copy is one line."""
    with zipfile_names(good["ts"]) as names:
        assert any(n.endswith("constants.pkl") for n in names) and any("/code/" in n for n in names)
    ts_spec = {"arch": "TinyOpenAI", "pretrained": str(good["ts"]), "config_file": str(good["ts_json"])}
    sd_spec = {**ts_spec, "pretrained": str(good["ts_sd"])}
    cpu = torch.device("cpu")
    ts_model, ts_pre, tok = build_clip(ts_spec, cpu)
    sd_model, sd_pre, _ = build_clip(sd_spec, cpu)
    assert type(ts_model).__name__ == "CLIP" and not isinstance(ts_model, torch.jit.ScriptModule)
    image = ts_pre(Image.fromarray((np.random.default_rng(0).random((40, 50, 3)) * 255).astype("uint8")))[None]
    assert torch.equal(image, sd_pre(Image.fromarray((np.random.default_rng(0).random((40, 50, 3)) * 255)
                                                     .astype("uint8")))[None])
    texts = tok(["a photo of a cat.", "a tree frog"])
    with torch.no_grad():
        torch.testing.assert_close(ts_model.encode_image(image), sd_model.encode_image(image), rtol=0, atol=1e-6)
        torch.testing.assert_close(ts_model.encode_text(texts), sd_model.encode_text(texts), rtol=0, atol=1e-6)
    # as a reward: the same CLIPScores
    rewards = [build_reward({**spec, "weight": 2.5}, cpu) for spec in (ts_spec, sd_spec)]
    for r in rewards:
        r.set_candidates(["a photo of a cat.", "a photo of a dog.", "a tree frog"])
    s_ts, s_sd = (r(image, torch.tensor([[0, 1, 2]])) for r in rewards)
    torch.testing.assert_close(s_ts, s_sd, rtol=0, atol=1e-5)
    assert s_ts.shape == (1, 3)
    # as a policy of RLCF encoder tuning: the same adapted prediction
    from tasks.classification.policies import EncoderPolicy

    views = torch.randn(4, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    outs = []
    for model in (ts_model, sd_model):
        policy = EncoderPolicy(model, ["cat", "dog", "tree frog"], tok)
        method = rlcf.create_method("rlcf", policy, rewards[1], steps=1, lr=1e-3, k=2, selection=0.5)
        with torch.no_grad():
            outs.append(method(views))
    torch.testing.assert_close(outs[0], outs[1], rtol=0, atol=1e-5)
    with pytest.raises(DamagedFileError, match=r"is damaged: truncated.*Get it again"):
        load_clip("TinyOpenAI", str(truncated(good["ts"], tmp_path / "cut.pt")), config_file=good["ts_json"])


class zipfile_names:
    def __init__(self, path):
        import zipfile

        self.z = zipfile.ZipFile(path)

    def __enter__(self):
        return self.z.namelist()

    def __exit__(self, *exc):
        self.z.close()


def test_the_issue_case_in_a_real_process(good, tmp_path):
    """The newcomer's case, as a command line: caption TTA with a truncated OPT ``model.safetensors`` is one line on
    stderr naming the file, exit code 2, before any model is loaded (no traceback, in seconds)."""
    bad = truncated(good["opt"], tmp_path / "opt")
    ckpt = captioner_checkpoint(tmp_path / "c.pt", good["opt"])
    argv = captioning(good, tmp_path, "captioner", ckpt)
    argv = [a if not a.startswith("captioner.lm=") else f"captioner.lm={bad}" for a in argv]
    t0 = time.perf_counter()
    r = subprocess.run([sys.executable, "-m", "tasks.captioning.run", *argv[2:]], capture_output=True, text=True,
                       cwd=tmp_path, env={"PYTHONPATH": str(REPO), "PATH": "/usr/bin:/bin", "OMP_NUM_THREADS": "1"},
                       timeout=300)
    assert r.returncode == 2, r.stderr[-2000:]
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and str(bad / "model.safetensors") in lines[0] and "Traceback" not in r.stderr, r.stderr
    assert "hf download facebook/opt-125m" in lines[0] or "huggingface-cli download" in lines[0]
    assert not (tmp_path / "out").exists()              # nothing was written
    print(f"damaged OPT named in {time.perf_counter() - t0:.1f} s")
