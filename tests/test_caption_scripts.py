"""The captioning shell scripts fail at once, naming every missing input and how to get it."""
from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SCRIPTS = ["tta_clipcap_c2f.sh", "tta_capdec_c2f.sh", "tta_clipcap_c2n.sh", "tta_capdec_c2n.sh",
           "train_clipcap_coco.sh", "train_capdec_coco.sh"]


def _run(script: str, tmp_path: Path, *args: str, **env: str) -> subprocess.CompletedProcess:
    base = {k: v for k, v in os.environ.items() if k not in ("CKPT", "ANN", "IMAGES", "COCO_ANN", "COCO_IMAGES")}
    base.update(DATA_ROOT=str(tmp_path / "data"), PRETRAINED=str(tmp_path / "pretrained"),
                OUTPUT=str(tmp_path / "output"), **env)
    return subprocess.run(["bash", str(REPO / "scripts" / script), *args], capture_output=True, text=True,
                          env=base, timeout=60)


def test_first_command_fails_at_once_naming_missing_paths(tmp_path):
    r = _run("tta_clipcap_c2f.sh", tmp_path, "0")
    assert r.returncode != 0
    err = r.stderr
    for path in ("output/clipcap_opt125m_transformer_coco_01/ckpt-latest.pt",
                 "data/flickr30k/annotations/flickr30k_test.json", "pretrained/opt-125m/config.json",
                 "pretrained/clip/ViT-B-16.pt", "pretrained/clip/ViT-L-14.pt", "pretrained/clip/ViT-B-32.pt"):
        assert str(tmp_path / path) in err, path
    assert f"{_hub_cli()} download facebook/opt-125m" in err and "train_clipcap_coco.sh" in err


def test_only_the_missing_input_is_reported(tmp_path):
    (tmp_path / "pretrained" / "clip").mkdir(parents=True)
    (tmp_path / "pretrained" / "opt-125m").mkdir()
    (tmp_path / "pretrained" / "opt-125m" / "config.json").write_text("{}")
    for name in ("ViT-B-16", "ViT-L-14", "ViT-B-32"):
        (tmp_path / "pretrained" / "clip" / f"{name}.pt").write_bytes(b"")
    (tmp_path / "data" / "flickr30k" / "annotations").mkdir(parents=True)
    (tmp_path / "data" / "flickr30k" / "annotations" / "flickr30k_test.json").write_text("[]")
    r = _run("tta_clipcap_c2f.sh", tmp_path, "0")
    assert r.returncode != 0
    lines = [x for x in r.stderr.splitlines() if x.startswith("error:")]
    assert len(lines) == 1 and "ckpt-latest.pt" in lines[0]


@pytest.mark.parametrize("script", SCRIPTS)
def test_every_script_checks_inputs_and_usage(tmp_path, script):
    r = _run(script, tmp_path, "0")
    assert r.returncode != 0 and "error:" in r.stderr and str(tmp_path) in r.stderr
    r = _run(script, tmp_path)   # no GPU id
    assert r.returncode != 0 and "usage" in r.stderr


def _hub_cli() -> str:
    """The download CLI of the installed huggingface_hub: ``hf`` (>= 0.34) or ``huggingface-cli``."""
    from tasks.common.data import hub_download_command

    return hub_download_command("x", "y").split()[0]


def test_opt_hint_names_a_command_the_installed_hub_has():
    """The hint's command exists: its CLI entry point is installed and knows the ``download`` subcommand."""
    import shutil
    import subprocess

    from tasks.captioning.checkpoint import opt_hint

    cli = _hub_cli()
    assert f"`{cli} download facebook/opt-125m --local-dir /x/opt-125m`" in opt_hint("/x/opt-125m")
    exe = shutil.which(cli) or str(Path(sys.executable).parent / cli)
    out = subprocess.run([exe, "download", "--help"], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0 and "--local-dir" in out.stdout, out.stderr


def test_every_download_hint_uses_the_installed_hub_cli(tmp_path):
    """No code hard-codes a download command: each goes through ``hub_download_command`` (scripts: ``hub_command``
    of scripts/lib.sh), so it names the CLI the installed huggingface_hub has."""
    cli = _hub_cli()
    offenders = []
    for folder in ("tasks", "scripts", "rlcf", "benchmarks"):
        for f in sorted((REPO / folder).rglob("*")):
            if f.suffix in (".py", ".sh") and f != REPO / "tasks" / "common" / "data.py":
                text = re.sub(r'"\s*\n\s*"', "", f.read_text())   # join string literals split over lines
                if re.search(r"huggingface-cli\s+download|\bhf download", text):
                    offenders.append(str(f.relative_to(REPO)))
    assert offenders == []
    from tasks.caption_rl.vlrm.similarity import ITM_HINT

    assert f"`{cli} download Salesforce/blip2-itm-vit-g --local-dir /m`" in ITM_HINT.format(path="/m")
    env = {k: v for k, v in os.environ.items() if k not in ("CONFIG", "ITM")}
    r = subprocess.run(["bash", str(REPO / "scripts" / "train_rl_vlrm_coco.sh"), "0"], capture_output=True, text=True,
                       env={**env, "PRETRAINED": str(tmp_path / "p"), "DATA_ROOT": str(tmp_path),
                            "OUTPUT": str(tmp_path)}, timeout=60)
    assert f"{cli} download Salesforce/blip2-itm-vit-g --local-dir {tmp_path / 'p' / 'blip2-itm-vit-g'}" in r.stderr


def test_training_cli_names_the_opt_download_command_in_one_line(tmp_path, capsys):
    from tasks.captioning.train import main

    (tmp_path / "ann.json").write_text("[]")
    with pytest.raises(SystemExit) as e:
        main(["--mode", "capdec", "--annotations", str(tmp_path / "ann.json"), "--clip-weights", "x.pt",
              "--lm", str(tmp_path / "opt-125m"), "--out-dir", str(tmp_path / "out")])
    err = capsys.readouterr().err
    assert e.value.code == 2 and len(err.strip().splitlines()) == 1
    assert f"{_hub_cli()} download facebook/opt-125m --local-dir {tmp_path / 'opt-125m'}" in err
