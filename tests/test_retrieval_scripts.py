"""Retrieval shell scripts: stop at once naming what is missing; the Flickr script end to end on tiny models."""
from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest
from test_retrieval_data import make_karpathy

REPO = Path(__file__).resolve().parents[1]
FIX = REPO / "tests" / "fixtures"


def _run(script: str, tmp_path: Path, *args: str, **env: str) -> subprocess.CompletedProcess:
    base = dict(os.environ, DATA_ROOT=str(tmp_path / "data"), PRETRAINED=str(tmp_path / "pretrained"),
                OUTPUT=str(tmp_path / "output"), OMP_NUM_THREADS="1", **env)
    return subprocess.run(["bash", str(REPO / "scripts" / script), *args], capture_output=True, text=True,
                          env=base, timeout=300)


def test_coco_script_fails_at_once_naming_every_missing_input(tmp_path):
    r = _run("tta_coco_ret.sh", tmp_path, "0")
    assert r.returncode != 0 and not (tmp_path / "output").exists()
    for name in ("ViT-B-16.pt", "ViT-L-14.pt", "ViT-L-14-336px.pt", "RN50x64.pt"):
        assert str(tmp_path / "pretrained" / "clip" / name) in r.stderr, name
    assert str(tmp_path / "data" / "coco" / "annotations" / "coco_karpathy_test.json") in r.stderr
    assert "dataset_coco.json" in r.stderr
    r = _run("tta_flickr_ret.sh", tmp_path)                 # no GPU id
    assert r.returncode == 2 and "usage" in r.stderr


@pytest.mark.slow
@pytest.mark.skipif(not os.environ.get("RLCF_SLOW_TESTS"), reason="3 Python processes (~15-45 s on 2 shared cores); "
                    "set RLCF_SLOW_TESTS=1 (the in-process CLI runs are tested in test_retrieval_run.py)")
def test_flickr_script_end_to_end_on_tiny_models(tmp_path):
    make_karpathy(tmp_path / "data", "flickr30k", n=6, caps=2)
    extra = " ".join([
        "model.arch=RLCF-Tiny-Test", "model.pretrained=null", f"model.config_file={FIX / 'RLCF-Tiny-Test.json'}",
        "reward.arch=RLCF-Tiny-Reward", "reward.pretrained=null", f"reward.config_file={FIX / 'RLCF-Tiny-Reward.json'}",
        "retrieval.k_i2t=4", "retrieval.k_t2i=3", "adapt.steps=1", "run.workers=0", "run.device=cpu"])
    r = _run("tta_flickr_ret.sh", tmp_path, "0", EXTRA=extra)
    assert r.returncode == 0, r.stderr[-3000:]
    res = json.loads((tmp_path / "output" / "retrieval" / "flickr30k" / "01_rlcf" / "results.json").read_text())
    m = res["flickr30k"]
    assert m["method"] == "rlcf" and m["runs"]["t2i"]["queries"] == 12 and m["runs"]["i2t"]["queries"] == 6
    assert {"txt_r1", "img_r10", "r_mean"} <= set(m)


def test_check_catches_a_wrong_image_folder_in_under_5_s(tmp_path, capsys):
    """``tasks.retrieval.check`` on a Flickr30K Karpathy file whose images were unpacked into the wrong folder:
    one line naming the image and the roots tried, before any model is built; the canonical layout passes."""

    from tasks.retrieval.check import main

    make_karpathy(tmp_path, "flickr30k", n=4, caps=2)
    images = tmp_path / "flickr30k" / "images"
    images.rename(tmp_path / "flickr30k" / "download")
    args = ["--config", str(REPO / "configs/retrieval/flickr.yaml"), f"data.root={tmp_path}", "model.pretrained=null",
            "reward.pretrained=null"]
    rc = main(args)
    err = capsys.readouterr().err
    assert rc == 1
    assert "flickr30k-images/1000.jpg" in err and str(images) in err and len(err.strip().splitlines()) == 1
    (tmp_path / "flickr30k" / "download").rename(images)
    assert main(args) == 0, capsys.readouterr().err
