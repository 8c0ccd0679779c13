"""Pre-flight checks of caption TTA, captioner training and caption RL: the annotation file is opened and its first
and random images are resolved (with the loaders' own rule) and opened before any model is loaded; an unresolvable
path is reported, naming it, in under 5 s. One documented layout per dataset, both Flickr30K layouts accepted."""
from __future__ import annotations

import json
import os
import re
import subprocess
import time
from pathlib import Path

import pytest
from PIL import Image

from tasks.captioning.data import CaptionImageDataset, load_annotations

REPO = Path(__file__).resolve().parents[1]
ENV_KEYS = ("CKPT", "ANN", "IMAGES", "COCO_ANN", "COCO_TEST_ANN", "COCO_IMAGES", "CONFIG", "VARIANT")


def _img(path: Path, i: int = 0) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (12, 8), (40 * i % 255, 90, 200)).save(path)


def flickr(data: Path, images: str = "images/flickr30k-images", n: int = 6, karpathy: bool = False) -> Path:
    """A Flickr30K test split: LAVIS ``flickr30k_test.json`` (or Karpathy ``dataset_flickr30k.json``) with its images
    under ``flickr30k/<images>/``; returns the annotation file."""
    root = data / "flickr30k"
    for i in range(n):
        _img(root / images / f"{1000 + i}.jpg", i)
    ann = root / "annotations" / ("dataset_flickr30k.json" if karpathy else "flickr30k_test.json")
    ann.parent.mkdir(parents=True, exist_ok=True)
    if karpathy:
        body = {"images": [{"filename": f"{1000 + i}.jpg", "split": "test", "sentences": [{"raw": "a dog."}]}
                           for i in range(n)]}
    else:
        body = [{"image": f"flickr30k-images/{1000 + i}.jpg", "caption": ["a dog.", "a cat."]} for i in range(n)]
    ann.write_text(json.dumps(body))
    return ann


def coco(data: Path, images: str = "images", n: int = 4, split: str = "train") -> Path:
    """LAVIS ``coco_karpathy_<split>.json`` (one row per caption) with images under ``coco/<images>/{train,val}2014``."""
    rows = []
    for i in range(100 if split == "test" else 0, (100 if split == "test" else 0) + n):   # distinct test images
        folder = "train2014" if i % 2 == 0 else "val2014"
        rel = f"{folder}/COCO_{folder}_{i:012d}.jpg"
        _img(data / "coco" / images / rel, i)
        rows += [{"image": rel, "caption": c, "image_id": str(i)} for c in ("a red bus.", "a bus on a road.")]
    ann = data / "coco" / "annotations" / f"coco_karpathy_{split}.json"
    ann.parent.mkdir(parents=True, exist_ok=True)
    ann.write_text(json.dumps(rows))
    return ann


def _check(argv: list[str], capsys) -> tuple[int, str, float]:
    from tasks.captioning.check import main

    t0 = time.perf_counter()
    rc = main(argv)
    return rc, capsys.readouterr().err, time.perf_counter() - t0


@pytest.mark.parametrize("images,karpathy", [("images/flickr30k-images", False), ("flickr30k-images", False),
                                             ("images/flickr30k-images", True), ("flickr30k-images", True)])
def test_both_flickr_layouts_load_and_pass_the_check(tmp_path, capsys, images, karpathy):
    ann = flickr(tmp_path, images, karpathy=karpathy)
    for root in (tmp_path / "flickr30k", tmp_path / "flickr30k" / Path(images).parent):
        ds = CaptionImageDataset(load_annotations(ann), root)
        assert [ds.load_image(i).size for i in (0, 5)] == [(12, 8), (12, 8)]
        rc, err, _ = _check(["--data-only", f"data.annotations={ann}", f"data.images_root={root}"], capsys)
        assert rc == 0, err


def test_wrong_image_folder_is_caught_in_under_5_s_naming_the_path(tmp_path, capsys):
    ann = flickr(tmp_path, "download/flickr30k-images")   # unpacked one level too deep, elsewhere
    root = tmp_path / "flickr30k"
    rc, err, seconds = _check(["--data-only", f"data.annotations={ann}", f"data.images_root={root}"], capsys)
    assert rc == 1 and seconds < 5
    assert "flickr30k-images/1000.jpg" in err and str(root / "images" / "flickr30k-images" / "1000.jpg") in err
    assert len(err.strip().splitlines()) == 1 and err.startswith("ERROR: ")


def test_random_probe_catches_a_missing_or_unreadable_later_image(tmp_path, capsys):
    ann = flickr(tmp_path, n=5)
    folder = tmp_path / "flickr30k" / "images" / "flickr30k-images"
    (folder / "1003.jpg").unlink()
    (folder / "1004.jpg").write_text("<html>not an image</html>")
    rc, err, _ = _check(["--data-only", f"data.annotations={ann}", f"data.images_root={tmp_path / 'flickr30k'}"],
                        capsys)
    assert rc == 1
    lines = err.strip().splitlines()
    assert len(lines) == 2 and "1003.jpg" in lines[0] and "1004.jpg" in lines[1]


def test_full_check_names_missing_weights_and_annotations(tmp_path, capsys):
    rc, err, seconds = _check([f"captioner.checkpoint={tmp_path / 'ckpt.pt'}", f"model.pretrained={tmp_path / 'B.pt'}",
                               f"data.annotations={tmp_path / 'none.json'}"], capsys)
    assert rc == 1 and seconds < 5
    for path in ("ckpt.pt", "B.pt", "none.json"):
        assert str(tmp_path / path) in err, path


def _script(script: str, tmp_path: Path, *args: str, **env: str) -> subprocess.CompletedProcess:
    base = {k: v for k, v in os.environ.items() if k not in ENV_KEYS}
    base.update(DATA_ROOT=str(tmp_path / "data"), PRETRAINED=str(tmp_path / "pretrained"),
                OUTPUT=str(tmp_path / "output"), **env)
    return subprocess.run(["bash", str(REPO / "scripts" / script), *args], capture_output=True, text=True, env=base,
                          timeout=60)


def _weights(tmp_path: Path, *clips: str, ckpt: str = "clipcap_opt125m_transformer_coco_01/ckpt-latest.pt") -> None:
    """Empty stand-ins for every weight file a script's ``need`` lines ask for (the check must stop before any
    model is loaded: loading one of these would fail)."""
    for c in clips:
        (tmp_path / "pretrained" / "clip").mkdir(parents=True, exist_ok=True)
        (tmp_path / "pretrained" / "clip" / f"{c}.pt").write_bytes(b"")
    (tmp_path / "pretrained" / "opt-125m").mkdir(parents=True, exist_ok=True)
    (tmp_path / "pretrained" / "opt-125m" / "config.json").write_text("{}")
    (tmp_path / "output" / ckpt).parent.mkdir(parents=True, exist_ok=True)
    (tmp_path / "output" / ckpt).write_bytes(b"")


def test_tta_script_stops_before_loading_models_on_a_wrong_image_folder(tmp_path):
    _weights(tmp_path, "ViT-B-16", "ViT-L-14", "ViT-B-32")
    flickr(tmp_path / "data", "download/flickr30k-images")
    r = _script("tta_clipcap_c2f.sh", tmp_path, "cpu")
    assert r.returncode == 2, r.stderr
    assert "flickr30k-images/1000.jpg" in r.stderr and str(tmp_path / "data" / "flickr30k") in r.stderr
    assert "Traceback" not in r.stderr and not (tmp_path / "output" / "clipcap_opt125m_transformer_coco_01" /
                                                "coco2flickr30k_tta_01").exists()


def test_nocaps_script_checks_every_domain(tmp_path):
    _weights(tmp_path, "ViT-B-16", "ViT-L-14", "ViT-B-32", ckpt="capdec_opt125m_transformer_coco_01/ckpt-latest.pt")
    images = [{"id": i, "file_name": f"{i:04x}.jpg", "domain": d} for i, d in enumerate(["in-domain", "out-domain"])]
    ann = tmp_path / "data" / "nocaps" / "annotations" / "nocaps_val_4500_captions.json"
    ann.parent.mkdir(parents=True)
    ann.write_text(json.dumps({"images": images, "annotations": [{"image_id": 1, "caption": "x"}]}))
    _img(tmp_path / "data" / "nocaps" / "images" / "0000.jpg")   # the out-domain image is missing
    r = _script("tta_capdec_c2n.sh", tmp_path, "cpu")
    assert r.returncode == 2 and "0001.jpg" in r.stderr and "Traceback" not in r.stderr


def test_training_script_checks_coco_images(tmp_path, capsys):
    _weights(tmp_path, "ViT-B-16")
    ann = coco(tmp_path / "data", images="images/old")   # one level too deep: train2014/ is not found
    r = _script("train_clipcap_coco.sh", tmp_path, "cpu")
    assert r.returncode == 2 and "train2014/COCO_train2014_000000000000.jpg" in r.stderr, r.stderr
    assert "Traceback" not in r.stderr
    # CapDec trains on the captions only: its check (images_root=null, as train_coco.sh passes it) passes
    rc, err, _ = _check(["--data-only", f"data.annotations={ann}", "data.images_root=null", "data.split=train"], capsys)
    assert rc == 0, err


def test_caption_rl_check_catches_a_wrong_image_folder_in_under_5_s(tmp_path, capsys):
    from tasks.caption_rl.check import main

    train, test = coco(tmp_path, "images-old"), coco(tmp_path, "images", split="test")
    rc = main(["--config", str(REPO / "configs/caption_rl/gt_coco.yaml"), f"data.annotations={train}",
               f"data.images_root={tmp_path / 'coco' / 'images'}", f"eval.annotations={test}",
               f"eval.images_root={tmp_path / 'coco' / 'images'}"])
    err = capsys.readouterr().err
    assert rc == 1
    assert len(err.strip().splitlines()) == 1 and "training data" in err
    assert "train2014/COCO_train2014_000000000000.jpg" in err and str(tmp_path / "coco" / "images") in err


@pytest.mark.parametrize("script", ["train_rl_gt_coco.sh", "train_rl_vlrm_coco.sh"])
def test_caption_rl_scripts_run_the_check(tmp_path, script):
    _weights(tmp_path, "ViT-B-16", "ViT-B-32", "ViT-L-14")
    (tmp_path / "pretrained" / "blip2-itm-vit-g").mkdir(parents=True)
    (tmp_path / "pretrained" / "blip2-itm-vit-g" / "config.json").write_text("{}")
    (tmp_path / "pretrained" / "clip" / "ViT-g-14-laion2b_s12b_b42k.bin").write_bytes(b"")
    coco(tmp_path / "data")
    coco(tmp_path / "data", "images-old", split="test")   # the test images are elsewhere: not found
    (tmp_path / "data" / "coco" / "images-old").rename(tmp_path / "data" / "coco" / "elsewhere")
    r = _script(script, tmp_path, "cpu")
    assert r.returncode == 2 and "evaluation data" in r.stderr and "Traceback" not in r.stderr, r.stderr[-2000:]


# ------------------------------------------------------------------------ one layout, everywhere
def _layout_block(path: Path) -> str:
    text = path.read_text()
    m = re.search(r"<!-- data-layout -->\n(.*?)<!-- /data-layout -->", text, re.S)
    assert m, f"{path} has no data-layout block"
    return m.group(1)


CANONICAL = {"coco": "coco/images/{train2014,val2014}/", "flickr30k": "flickr30k/images/flickr30k-images/",
             "nocaps": "nocaps/images/"}


def test_readmes_and_scripts_agree_on_one_layout_per_dataset():
    block = _layout_block(REPO / "README.md")
    assert block == _layout_block(REPO / "tasks" / "captioning" / "README.md")
    for folder in CANONICAL.values():
        assert folder in block
    docs = (REPO / "tasks" / "retrieval" / "data.py").read_text()
    assert CANONICAL["flickr30k"] in docs and "coco/images/val2014/" in docs
    scripts = {"flickr30k": ["tta_clipcap_c2f.sh", "tta_capdec_c2f.sh", "tta_flickr_ret.sh"],
               "nocaps": ["tta_clipcap_c2n.sh", "tta_capdec_c2n.sh"],
               "coco": ["tta_coco_ret.sh", "train_clipcap_coco.sh", "train_capdec_coco.sh", "train_rl_gt_coco.sh",
                        "train_rl_vlrm_coco.sh"]}
    for dataset, names in scripts.items():
        for name in names:
            header = "".join(ln for ln in (REPO / "scripts" / name).read_text().splitlines(True) if ln.startswith("#"))
            assert "Data layout" in header and CANONICAL[dataset] in header, (name, dataset)
    for old in ("`flickr30k/flickr30k-images`", "$DATA_ROOT/flickr30k/flickr30k-images`"):
        assert old not in (REPO / "tasks" / "captioning" / "README.md").read_text()
