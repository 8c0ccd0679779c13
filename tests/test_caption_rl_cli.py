"""Caption RL command lines: the COCO scripts fail at once naming missing inputs; ``tasks.caption_rl.train`` runs,
resumes and exports on a synthetic mini set; the embedded-world run goes end to end (tiny sizes, random CLIPs)."""
from __future__ import annotations

import json
import os
import subprocess
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


VLRM_MODELS = ("pretrained/blip2-itm-vit-g/config.json", "pretrained/clip/ViT-g-14-laion2b_s12b_b42k.bin")


@pytest.mark.parametrize("script,clips,extra", [
    ("train_rl_gt_coco.sh", ("ViT-B-16", "ViT-B-32"), ()),
    ("train_rl_vlrm_coco.sh", ("ViT-B-16", "ViT-L-14"), VLRM_MODELS)])
def test_scripts_fail_at_once_naming_missing_files(tmp_path, script, clips, extra):
    r = _run(script, tmp_path, "0")
    assert r.returncode == 2
    for rel in ("out/clipcap_opt125m_transformer_coco_01/ckpt-latest.pt",
                "data/coco/annotations/coco_karpathy_train.json",
                "data/coco/annotations/coco_karpathy_test.json", "data/coco/images", "pretrained/opt-125m/config.json",
                *(f"pretrained/clip/{c}.pt" for c in clips), *extra):
        assert str(tmp_path / rel) in r.stderr, rel
    r = _run(script, tmp_path)
    assert r.returncode != 0 and "usage" in r.stderr


def test_vlrm_script_asks_for_the_models_of_its_config(tmp_path):
    env_cfg = {"CONFIG": "configs/caption_rl/vlrm_rs_coco.yaml"}
    r = subprocess.run(["bash", str(REPO / "scripts" / "train_rl_vlrm_coco.sh"), "0"], capture_output=True, text=True,
                       env={**{k: v for k, v in os.environ.items() if k not in ENV_KEYS}, **env_cfg,
                            "PRETRAINED": str(tmp_path / "p"), "DATA_ROOT": str(tmp_path), "OUTPUT": str(tmp_path)},
                       timeout=60)
    assert r.returncode == 2 and str(tmp_path / "p/clip/ViT-bigG-14-laion2b_s39b_b160k.bin") in r.stderr
    env_cfg = {"CONFIG": "configs/caption_rl/vlrm_clip_coco.yaml"}
    r = subprocess.run(["bash", str(REPO / "scripts" / "train_rl_vlrm_coco.sh"), "0"], capture_output=True, text=True,
                       env={**{k: v for k, v in os.environ.items() if k not in ENV_KEYS}, **env_cfg,
                            "PRETRAINED": str(tmp_path / "p"), "DATA_ROOT": str(tmp_path), "OUTPUT": str(tmp_path)},
                       timeout=60)
    assert r.returncode == 2 and "blip2-itm" not in r.stderr and "ViT-bigG" not in r.stderr


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


@torch.no_grad()
def _greedy_by_hand(cap, x: torch.Tensor) -> str:
    """Greedy decoding written out: argmax of the LM's next-token logits after ``[prefix ; BOS ; tokens]``, STOP
    forbidden before ``min_new_tokens``, at most ``max_new_tokens``; decoded without special tokens."""
    prefix = cap.prefix(x)
    toks = [cap.bos_id]
    for step in range(cap.config.max_new_tokens):
        emb = cap.lm.get_input_embeddings()(torch.tensor([toks]))
        logits = cap.lm(inputs_embeds=torch.cat([prefix, emb], 1)).logits[0, -1]
        if step < cap.config.min_new_tokens:
            logits[cap.stop_id] = float("-inf")
        nxt = int(logits.argmax())
        if nxt == cap.stop_id:
            break
        toks.append(nxt)
    return cap.tokenizer.decode(toks[1:], skip_special_tokens=True).strip()


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
            f"eval.images_root={d / 'images'}", "eval.coco=false", "eval.decoding.num_beams=2", "optim.batch_size=4",
            "optim.log_every=1", "vlrm.value_width=8", f"run.out_dir={tmp_path / 'run'}", "run.workers=0",
            "run.device=cpu"]
    first = main(args + ["optim.steps=1"])
    assert first["steps_run"] == 1 and first["final_eval"]["n"] == 3
    again = main(args + ["optim.steps=2"])                          # resumes at step 1
    assert again["steps_run"] == 1
    log = [json.loads(x) for x in (tmp_path / "run" / "train_log.jsonl").read_text().splitlines()]
    assert [x["step"] for x in log] == [1, 2] and "phi_abs" in log[0] and log[0]["ref"] == 0.0
    cap = load_captioner(tmp_path / "run" / "captioner-rl.pt")     # LoRA-free plain captioner
    assert type(cap.lm).__name__ == "OPTForCausalLM"
    x = torch.randn(2, 32, generator=torch.Generator().manual_seed(5))
    got = [row[0] for row in cap.generate(x)]
    assert got == [_greedy_by_hand(cap, x[i:i + 1]) for i in range(2)]
    # words of the tokenizer's vocabulary (a random policy may say "<s>", an ordinary token of this word-level
    # tokenizer), never a token that decoding skips (</s>, <pad>, <unk>)
    vocab = set(cap.tokenizer.get_vocab()) - set(cap.tokenizer.all_special_tokens)
    assert all(isinstance(t, str) and t and set(t.split()) <= vocab for t in got), (got, vocab)
    # train: prefix + reward features; test: prefix features, reused as eval features (same CLIP)
    assert len(list((tmp_path / "feat").glob("*.pt"))) == 3


def test_discriminator_pretraining_command_then_training_from_it(tmp_path):
    from tasks.caption_rl import train
    from tasks.caption_rl.gt import pretrain_disc

    d = tmp_path / "mini"
    _mini_set(d)
    tiny, rew = FIX / "RLCF-Tiny-Test.json", FIX / "RLCF-Tiny-Reward.json"
    args = [f"captioner.checkpoint={d / 'captioner.pt'}", "captioner.lm=null", "captioner.max_new_tokens=6",
            "captioner.stop_token=null", "model.arch=RLCF-Tiny-Test", "model.pretrained=null",
            f"model.config_file={tiny}", "reward.arch=RLCF-Tiny-Reward", "reward.pretrained=null",
            f"reward.config_file={rew}", f"data.annotations={d / 'train.json'}", f"data.images_root={d / 'images'}",
            f"data.feature_dir={tmp_path / 'feat'}", "data.neighbours=5", "gt.decoding.policy.num_beams=2",
            "gt.decoding.policy.max_new_tokens=6", "gt.decoding.baseline.max_new_tokens=6", "gt.disc_hidden=[8]",
            "gt.disc_pretrain.batch_size=4", f"run.out_dir={tmp_path / 'run'}", "run.workers=0", "run.device=cpu"]
    out = pretrain_disc.main(["--config", str(REPO / "configs/caption_rl/gt_coco.yaml"), *args,
                              "gt.disc_pretrain.steps=3"])
    path = tmp_path / "run" / "discriminator-pretrained.pt"
    assert out["path"] == str(path) and out["steps"] == 3
    blob = torch.load(path, weights_only=False)
    assert blob["meta"]["steps"] == 3 and blob["dim"] == 48 and blob["hidden"] == [8]
    summary = train.main(["--recipe", "gt_contrastive", *args, "eval.enabled=false", "optim.steps=1",
                          "optim.batch_size=4", f"gt.disc_checkpoint={path}", "gt.disc_pretrain.steps=0"])
    # one training row per ground-truth caption: 7 training images with 2 captions each
    assert (summary["n_train"], summary["n_images"], summary["steps_run"]) == (14, 7, 1)
    with pytest.raises(ValueError, match="gt.disc_pretrain.steps must be > 0"):
        pretrain_disc.main([*args, "gt.disc_pretrain.steps=0"])


def test_world_run_end_to_end(tmp_path):
    from tasks.caption_rl.world import main
    from tasks.world.splits import WorldConfig

    world = WorldConfig(sizes={**WorldConfig().sizes, "train": 24, "val": 6})
    tiny, rew = str(FIX / "RLCF-Tiny-Test.json"), str(FIX / "RLCF-Tiny-Reward.json")
    res = main(["--recipe", "gt_contrastive", "--ablation", "no_gt", "--out-dir", str(tmp_path / "out"),
                "--n-train", "24", "--n-eval", "6", "--epochs", "1", "--steps", "2", "--policy-clip", tiny,
                "--reward-clip", rew, "--eval-clip", tiny, "--data-root", str(tmp_path / "world"),
                "optim.batch_size=6", "captioner.max_new_tokens=6", "gt.decoding.policy.num_beams=2",
                "gt.decoding.policy.max_new_tokens=6", "gt.decoding.baseline.max_new_tokens=6",
                "eval.decoding.max_new_tokens=6", "gt.disc_pretrain.steps=2", "gt.disc_pretrain.batch_size=6"],
               world=world)
    from tasks.caption_rl.metrics import self_bleu_official
    from tasks.captioning.world_demo import world_split

    for key in ("t2i/R@1", "i2t/R@1", "self_BLEU-4", "vocab_size", "mean_length", "CIDEr"):
        assert key in res["before"] and key in res["after"], key
    assert res["steps"] == 2 and res["n_eval"] == 6 and res["eval_preset"] == "chaffin"
    train = world_split("train", 24, tmp_path / "world", world=world)
    assert res["n_rows"] == sum(len(c) for c in train.captions) > 24           # one row per caption
    for when, step in (("before", 0), ("after", 2)):
        caps = [x["caption"] for x in json.loads((tmp_path / "out" / f"captions-step{step}.json").read_text())]
        assert res[when]["self_BLEU-5"] == pytest.approx(self_bleu_official(caps))
        assert res[when]["vocab_size"] == len({w for c in caps for w in c.replace(".", " ").split()})
    assert (tmp_path / "out" / "discriminator-pretrained.pt").is_file()       # the first stage ran
    assert "| t2i/R@1 |" in (tmp_path / "out" / "results.md").read_text()
    with pytest.raises(ValueError):
        main(["--recipe", "vlrm", "--ablation", "no_disc"])


def test_world_out_dir_of_another_run_is_refused(tmp_path):
    from tasks.caption_rl.world import _claim_out_dir

    cfg = {"optim": {"steps": 150}, "world_run": {"n_train": 2000}}
    _claim_out_dir(tmp_path / "run", cfg)
    _claim_out_dir(tmp_path / "run", cfg)                              # the same run again: resumes
    with pytest.raises(ValueError, match="another configuration"):
        _claim_out_dir(tmp_path / "run", {**cfg, "world_run": {"n_train": 8000}})


def test_vlrm_with_a_local_itm_model_end_to_end(tmp_path):
    """vlrm.sim=itm through the command line: a tiny BLIP-2 retrieval model saved as a local folder (model,
    tokenizer, image processor), the images loaded for it, sim = its positive ITM logit."""
    from transformers import BlipImageProcessor

    from tasks.caption_rl.vlrm.similarity import ITMSimilarity, load_blip2_itm
    from tasks.caption_rl.train import main
    from tasks.captioning.checkpoint import build_word_tokenizer
    from tasks.common.data import MissingDataError
    from tests.test_caption_rl_itm import tiny_blip2_itm

    d = tmp_path / "mini"
    _mini_set(d)
    texts = [c["caption"] for c in json.loads((d / "train.json").read_text())]
    tok = build_word_tokenizer(texts)
    itm = tiny_blip2_itm(len(tok.get_vocab()))
    folder = tmp_path / "blip2-itm"
    itm.save_pretrained(folder)
    tok.save_pretrained(folder)
    BlipImageProcessor(size={"height": 32, "width": 32}).save_pretrained(folder)
    model, tok2, proc = load_blip2_itm(folder)
    px = proc(images=[Image.open(d / "images" / "im0.png").convert("RGB")], return_tensors="pt")["pixel_values"]
    assert px.shape == (1, 3, 32, 32)
    torch.testing.assert_close(ITMSimilarity(model, tok2).scores(px, ["a red square ."]),
                               ITMSimilarity(itm, tok).scores(px, ["a red square ."]))
    with pytest.raises(MissingDataError, match="blip2-itm-vit-g"):
        load_blip2_itm(tmp_path / "none")
    tiny, rew = FIX / "RLCF-Tiny-Test.json", FIX / "RLCF-Tiny-Reward.json"
    summary = main(["--recipe", "vlrm", f"captioner.checkpoint={d / 'captioner.pt'}", "captioner.lm=null",
                    "captioner.max_new_tokens=6", "captioner.stop_token=null", "model.arch=RLCF-Tiny-Test",
                    "model.pretrained=null", f"model.config_file={tiny}", "reward.arch=RLCF-Tiny-Reward",
                    "reward.pretrained=null", f"reward.config_file={rew}", f"data.annotations={d / 'train.json'}",
                    f"data.images_root={d / 'images'}", f"data.feature_dir={tmp_path / 'feat'}", "eval.enabled=false",
                    "vlrm.sim=itm", f"vlrm.itm.path={folder}", "vlrm.ref_mode=captioner", "vlrm.value_width=8",
                    "optim.steps=1", "optim.batch_size=4", f"run.out_dir={tmp_path / 'run'}", "run.workers=0",
                    "run.device=cpu"])
    log = json.loads((tmp_path / "run" / "train_log.jsonl").read_text().splitlines()[0])
    assert summary["n_train"] == 7 and "sim_itm" in log and log["sim"] == log["sim_itm"]
    assert "sim_clip" not in log
