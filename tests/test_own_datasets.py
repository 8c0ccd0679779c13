"""Anyone's classification data: class folders with a names file or a JSON map, CSV / JSONL lists with string or
integer labels, images held in Python; every error names the file (and line) and what to do."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from tasks.classification.datasets import InMemoryDataset, build_dataset
from tasks.classification.views import ViewTransform
from tasks.common.data import UserError


def _img(path: Path, colour: tuple[int, int, int]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (20, 16), colour).save(path)
    return path


def _folder(root: Path) -> Path:
    for c, col in (("tree_frog", (0, 200, 0)), ("cat", (200, 0, 0))):
        for i in range(2):
            _img(root / c / f"{i}.png", col)
    return root


def test_folder_names_from_folders_a_names_file_or_a_json_map(tmp_path):
    root = _folder(tmp_path / "data")
    ds = build_dataset("folder", root, classnames_source="folder")
    assert ds.classnames == ["cat", "tree_frog"] and [y for _, y in ds.items] == [0, 0, 1, 1]   # sorted folders
    (tmp_path / "names.txt").write_text("house cat\ntree frog\n")
    assert build_dataset("folder", root, classnames_source=str(tmp_path / "names.txt")).classnames == [
        "house cat", "tree frog"]
    (tmp_path / "names.json").write_text(json.dumps({"tree_frog": "frog", "cat": "kitten"}))
    assert build_dataset("folder", root, classnames_source=str(tmp_path / "names.json")).classnames == [
        "kitten", "frog"]
    (tmp_path / "short.txt").write_text("one name\n")
    with pytest.raises(UserError, match=r"short.txt' has 1 names for 2 classes"):
        build_dataset("folder", root, classnames_source=str(tmp_path / "short.txt"))
    with pytest.raises(UserError, match="names.txt' not found: expected .*<class>/"):   # a file, not a folder
        build_dataset("folder", tmp_path / "names.txt")
    (tmp_path / "flat").mkdir()
    _img(tmp_path / "flat" / "x.png", (0, 0, 0))
    with pytest.raises(UserError, match="no class folders"):
        build_dataset("folder", tmp_path / "flat")
    (tmp_path / "empty" / "cls").mkdir(parents=True)
    with pytest.raises(UserError, match="has no images"):
        build_dataset("folder", tmp_path / "empty")


def test_lists_csv_and_jsonl_with_string_or_integer_labels(tmp_path):
    a, b = _img(tmp_path / "imgs" / "a.png", (1, 2, 3)), _img(tmp_path / "imgs" / "b.png", (9, 9, 9))
    (tmp_path / "l.csv").write_text("path,label\nimgs/a.png,dog\nimgs/b.png,cat\n")
    ds = build_dataset("list", tmp_path, file=str(tmp_path / "l.csv"))
    assert ds.classnames == ["cat", "dog"] and [y for _, y in ds.items] == [1, 0]
    assert ds.load(0).size == (20, 16)
    (tmp_path / "l.jsonl").write_text(json.dumps({"path": "imgs/a.png", "label": 1}) + "\n"
                                      + json.dumps({"image": str(b), "label": 0}) + "\n")   # absolute paths too
    (tmp_path / "names.txt").write_text("zero\none\n")
    ds = build_dataset("list", tmp_path, file=str(tmp_path / "l.jsonl"), classnames_source=str(tmp_path / "names.txt"))
    assert ds.classnames == ["zero", "one"] and [y for _, y in ds.items] == [1, 0] and ds.load(1).size == (20, 16)
    with pytest.raises(UserError, match="integer labels: give their names with data.classnames"):
        build_dataset("list", tmp_path, file=str(tmp_path / "l.jsonl"))
    (tmp_path / "bad.jsonl").write_text(json.dumps({"path": "imgs/a.png", "label": 5}) + "\n")
    with pytest.raises(UserError, match=r"bad.jsonl:1: label 5 is outside the 2 names"):
        build_dataset("list", tmp_path, file=str(tmp_path / "bad.jsonl"), classnames_source=str(tmp_path / "names.txt"))
    (tmp_path / "missing.csv").write_text("imgs/a.png,dog\nimgs/nope.png,cat\n")
    with pytest.raises(UserError, match=r"missing.csv:2"):
        build_dataset("list", tmp_path, file=str(tmp_path / "missing.csv"))
    (tmp_path / "broken.jsonl").write_text("{not json\n")
    with pytest.raises(UserError, match=r"broken.jsonl:1: not a JSON object"):
        build_dataset("list", tmp_path, file=str(tmp_path / "broken.jsonl"))
    assert a.is_file()


def test_in_memory_images_of_every_kind_give_the_same_views():
    pil = Image.new("RGB", (24, 24), (10, 120, 230))
    arr = np.array(pil)                                         # [H, W, 3] uint8
    t8 = torch.from_numpy(arr).permute(2, 0, 1).contiguous()    # [3, H, W] uint8
    tf = t8.float() / 255                                       # [3, H, W] float in [0, 1]
    ds = InMemoryDataset([pil, arr, t8, tf], [0, 1, 1, 0], ["sky", "sea"])
    views = ViewTransform(n_views=1, resolution=16)
    out = [views(ds.load(i)) for i in range(len(ds))]
    assert all(torch.allclose(o, out[0], atol=1e-6) for o in out), [float((o - out[0]).abs().max()) for o in out]
    assert ds.items[2] == ("image-2", 1) and ds.classnames == ["sky", "sea"]
    with pytest.raises(ValueError, match="2 images for 1 labels"):
        InMemoryDataset([pil, pil], [0], ["sky"])
