"""Retrieval loaders on fabricated fixtures: LAVIS and Karpathy formats, COCO and Flickr30K layouts."""
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from tasks.common.data import MissingDataError
from tasks.retrieval.data import build_file_dataset, build_retrieval_data, dataset_tag, pre_caption, read_annotations

COLOURS = ["red", "green", "blue", "yellow", "purple", "orange", "white", "black", "pink", "grey"]


def raw_captions(i: int, caps: int) -> list[str]:
    return [f"A {COLOURS[i % len(COLOURS)]} Thing:  number {k}!" for k in range(caps)]


def _image(path: Path, seed: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    arr = (np.random.default_rng(seed).random((30, 40, 3)) * 255).astype("uint8")
    Image.fromarray(arr).save(path)


def make_lavis(root: Path, dataset: str = "coco", n: int = 8, caps: int = 3) -> Path:
    """LAVIS test file + images in the default layout; returns ``root``."""
    entries = []
    for i in range(n):
        if dataset == "coco":
            rel, img_root = f"val2014/COCO_val2014_{i:012d}.jpg", root / "coco" / "images"
        else:
            rel, img_root = f"flickr30k-images/{1000 + i}.jpg", root / "flickr30k"
        _image(img_root / rel, i)
        entries.append({"image": rel, "caption": raw_captions(i, caps), "image_id": i})
    name = ("coco/annotations/coco_karpathy_test.json" if dataset == "coco"
            else "flickr30k/annotations/flickr30k_test.json")
    (root / name).parent.mkdir(parents=True, exist_ok=True)
    (root / name).write_text(json.dumps(entries))
    return root


def make_karpathy(root: Path, dataset: str = "coco", n: int = 8, caps: int = 3, n_train: int = 2) -> Path:
    """Karpathy ``dataset_<name>.json`` (train images first, then the test split) + test images."""
    images = []
    for j in range(n_train):
        images.append({"split": "train", "filename": f"train_{j}.jpg", "sentences": [{"raw": "not in test"}]})
    for i in range(n):
        sents = [{"raw": c, "tokens": c.split()} for c in raw_captions(i, caps)]
        if dataset == "coco":
            fn = f"COCO_val2014_{i:012d}.jpg"
            images.append({"split": "test", "filepath": "val2014", "filename": fn, "cocoid": i, "sentences": sents})
            _image(root / "coco" / "images" / "val2014" / fn, i)
        else:
            fn = f"{1000 + i}.jpg"
            images.append({"split": "test", "filename": fn, "imgid": i, "sentences": sents})
            _image(root / "flickr30k" / "images" / "flickr30k-images" / fn, i)
    name = "coco/annotations/dataset_coco.json" if dataset == "coco" else "flickr30k/dataset_flickr30k.json"
    (root / name).parent.mkdir(parents=True, exist_ok=True)
    (root / name).write_text(json.dumps({"dataset": dataset, "images": images}))
    return root


@pytest.mark.parametrize("raw, expected", [
    ("A man riding a horse.", "a man riding a horse"),                 # lowercase, trailing '.' gone
    ('Two "dogs" (brown); playing: fetch!!', "two dogs brown playing fetch"),   # each punct -> space, runs collapse
    ("  leading and trailing  \n", "leading and trailing"),
    ("keep, commas - and 'quotes'?", "keep, commas - and 'quotes'?"),    # only .!"()*#:;~ are removed
    ("a\tb", "a\tb"),                                                     # a single whitespace char is kept (LAVIS)
    ("x*y#z~w", "x y z w"),
])
def test_pre_caption_matches_lavis(raw, expected):
    assert pre_caption(raw) == expected


def test_pre_caption_truncates_to_max_words():
    words = [f"w{i}" for i in range(60)]
    assert pre_caption(" ".join(words)) == " ".join(words[:50])
    assert pre_caption("a b c", max_words=2) == "a b"


@pytest.mark.parametrize("dataset", ["coco", "flickr30k"])
def test_lavis_and_karpathy_formats_give_the_same_test_set(tmp_path, dataset):
    a = build_file_dataset(dataset, make_lavis(tmp_path / "lavis", dataset))
    b = build_file_dataset(dataset, make_karpathy(tmp_path / "karpathy", dataset))
    for d in (a, b):
        assert d.n_images == 8 and d.n_texts == 24
        assert d.texts[0] == f"a {COLOURS[0]} thing number 0"
        assert d.img2txt[1] == [3, 4, 5] and d.txt2img[4] == 1
        assert all(d.txt2img[t] == i for i, ts in enumerate(d.img2txt) for t in ts)
        assert d.load_image(7).mode == "RGB" and d.load_image(7).size == (40, 30)
    assert a.texts == b.texts and a.img2txt == b.img2txt and a.txt2img == b.txt2img
    assert a.image_ids == b.image_ids            # same relative paths under the same image root
    assert a.text_id(4).endswith("#1")


def test_karpathy_keeps_only_the_test_split(tmp_path):
    make_karpathy(tmp_path, "coco", n=3, n_train=4)
    paths, caps = read_annotations(tmp_path / "coco/annotations/dataset_coco.json")
    assert paths == [f"val2014/COCO_val2014_{i:012d}.jpg" for i in range(3)]
    assert all(len(c) == 3 for c in caps)


def test_lavis_single_caption_entries_are_grouped_by_image(tmp_path):
    p = tmp_path / "ann.json"
    p.write_text(json.dumps([{"image": "a.jpg", "caption": "one"}, {"image": "b.jpg", "caption": "two"},
                             {"image": "a.jpg", "caption": "three"}]))
    assert read_annotations(p) == (["a.jpg", "b.jpg"], [["one", "three"], ["two"]])


def test_missing_data_errors_name_the_expected_layout(tmp_path):
    with pytest.raises(MissingDataError, match="coco_karpathy_test.json") as e:
        build_file_dataset("coco", tmp_path)
    assert "dataset_coco.json" in str(e.value) and "coco/images" in str(e.value)
    make_lavis(tmp_path, "flickr30k", n=3)
    (tmp_path / "flickr30k/flickr30k-images/1001.jpg").unlink()
    with pytest.raises(MissingDataError, match="1 of 3 flickr30k gallery images are missing"):
        build_file_dataset("flickr", tmp_path)
    with pytest.raises(MissingDataError, match="data.annotations"):
        build_file_dataset("coco", tmp_path, annotations=str(tmp_path / "nope.json"))
    with pytest.raises(KeyError, match="unknown retrieval dataset"):
        build_file_dataset("imagenet", tmp_path)


def test_config_overrides_and_subset(tmp_path):
    make_lavis(tmp_path / "d", "coco", n=5)
    ann = tmp_path / "d/coco/annotations/coco_karpathy_test.json"
    moved = tmp_path / "elsewhere.json"
    moved.write_text(ann.read_text())
    cfg = {"dataset": "coco", "root": str(tmp_path / "nowhere"), "annotations": str(moved),
           "images": str(tmp_path / "d/coco/images"), "max_words": 2, "max_images": 2}
    d = build_retrieval_data(cfg)
    assert d.n_images == 2 and d.n_texts == 6 and d.texts[0] == "a red"
    assert d.img2txt == [[0, 1, 2], [3, 4, 5]] and dataset_tag("flickr") == "flickr30k"


def test_world_split_as_a_retrieval_set(tmp_path, monkeypatch):
    import tasks.world.splits as splits

    class FakeWorld:                                   # the WorldDataset surface the adapter uses
        captions = [["A photo of a red star.", "the star is red."], ["a blue ring."]]

        def __len__(self):
            return 2

        def sample_id(self, i):
            return f"rendition/x/{i:06d}.png"

        def load(self, i):
            return Image.new("RGB", (48, 48))

    seen = {}
    monkeypatch.setattr(splits, "build_world_dataset", lambda split, root: seen.update(split=split, root=root)
                        or FakeWorld())
    d = build_retrieval_data({"dataset": "world/rendition", "root": str(tmp_path), "max_words": 50})
    assert seen == {"split": "rendition", "root": tmp_path / "world"}
    assert d.name == "world_rendition" and dataset_tag("world/rendition") == "world_rendition"
    assert d.texts == ["a photo of a red star", "the star is red", "a blue ring"] and d.txt2img == [0, 0, 1]
    assert d.text_id(2) == "rendition/x/000001.png#0" and d.load_image(1).size == (48, 48)
