"""Caption annotation loaders on fabricated files in every supported format, and the image dataset."""
from __future__ import annotations

import json

import pytest
from PIL import Image

from tasks.captioning.data import CaptionImageDataset, load_annotations, load_karpathy, load_lavis, load_nocaps
from tasks.common.data import MissingDataError


def _write(path, obj):
    path.write_text(json.dumps(obj))
    return path


def _karpathy_coco(tmp_path):
    def im(i, split):
        return {"filepath": "val2014" if split != "train" else "train2014", "filename": f"COCO_{i}.jpg",
                "imgid": i, "cocoid": 100 + i, "split": split,
                "sentences": [{"raw": f"caption {i} a ", "tokens": ["caption"]}, {"raw": f"caption {i} b"}]}
    return _write(tmp_path / "dataset_coco.json", {"dataset": "coco", "images": [
        im(0, "train"), im(1, "restval"), im(2, "val"), im(3, "test"), im(4, "test")]})


def test_karpathy_coco_splits(tmp_path):
    path = _karpathy_coco(tmp_path)
    test = load_karpathy(path, "test")
    assert [t.image for t in test] == ["val2014/COCO_3.jpg", "val2014/COCO_4.jpg"]
    assert test[0].image_id == "103" and test[0].references == ["caption 3 a", "caption 3 b"]
    assert [t.image_id for t in load_karpathy(path, "train")] == ["100", "101"]   # train + restval
    assert [t.image_id for t in load_karpathy(path, "train", merge_restval=False)] == ["100"]
    assert [t.image_id for t in load_annotations(path, "val")] == ["102"]


def test_karpathy_flickr(tmp_path):
    path = _write(tmp_path / "dataset_flickr30k.json", {"dataset": "flickr30k", "images": [
        {"filename": "1000092795.jpg", "imgid": 0, "split": "test", "sentences": [{"raw": "Two young guys ."}]},
        {"filename": "10002456.jpg", "imgid": 1, "split": "train", "sentences": [{"raw": "A man ."}]}]})
    items = load_annotations(path, "test")
    assert len(items) == 1 and items[0].image == "1000092795.jpg" and items[0].image_id == "1000092795"


def test_lavis_test_and_train_formats(tmp_path):
    test = _write(tmp_path / "flickr30k_test.json", [
        {"image": "flickr30k-images/1007129816.jpg", "caption": ["A man.", "A person."]},
        {"image": "flickr30k-images/1009434119.jpg", "caption": ["A dog."]}])
    items = load_lavis(test)
    assert [i.image_id for i in items] == ["1007129816", "1009434119"]
    assert items[0].references == ["A man.", "A person."]
    train = _write(tmp_path / "coco_karpathy_train.json", [
        {"caption": "A woman eating.", "image": "val2014/COCO_val2014_000000328757.jpg", "image_id": "coco_328757"},
        {"caption": "A man cooking.", "image": "train2014/COCO_train2014_000000000009.jpg", "image_id": "coco_9"},
        {"caption": "Food in a bowl.", "image": "val2014/COCO_val2014_000000328757.jpg", "image_id": "coco_328757"}])
    items = load_annotations(train)
    assert [(i.image_id, i.references) for i in items] == [
        ("coco_328757", ["A woman eating.", "Food in a bowl."]), ("coco_9", ["A man cooking."])]


def test_nocaps_domains(tmp_path):
    images = [{"id": i, "file_name": f"{i:04x}.jpg", "domain": d, "open_images_id": "x", "coco_url": "u"}
              for i, d in enumerate(["in-domain", "near-domain", "near-domain", "out-domain"])]
    anns = [{"image_id": i, "id": 10 * i + j, "caption": f"cap {i} {j}"} for i in range(4) for j in range(2)]
    path = _write(tmp_path / "nocaps_val_4500_captions.json",
                  {"licenses": [], "info": {}, "images": images, "annotations": anns})
    assert len(load_nocaps(path)) == 4
    near = load_nocaps(path, "near")
    assert [i.image_id for i in near] == ["1", "2"] and near[0].domain == "near-domain"
    assert near[0].references == ["cap 1 0", "cap 1 1"]
    assert [i.image_id for i in load_annotations(path, domain="out-domain")] == ["3"]
    with pytest.raises(ValueError, match="domain"):
        load_nocaps(path, "far")


def test_unknown_format_and_missing_file(tmp_path):
    with pytest.raises(ValueError, match="unrecognised"):
        load_annotations(_write(tmp_path / "x.json", {"foo": 1}))
    with pytest.raises(MissingDataError, match="nope.json"):
        load_annotations(tmp_path / "nope.json")


def test_image_dataset_resolves_paths(tmp_path):
    root = tmp_path / "flickr30k"
    (root / "flickr30k-images").mkdir(parents=True)
    Image.new("RGB", (20, 10), (255, 0, 0)).save(root / "flickr30k-images" / "1.jpg")
    path = _write(tmp_path / "t.json", [{"image": "flickr30k-images/1.jpg", "caption": ["red"]}])
    ds = CaptionImageDataset(load_annotations(path), root, transform=lambda im: im.size)
    assert ds[0] == ((20, 10), 0) and ds.sample_id(0) == "1"
    # Karpathy-style bare file names resolve against either root
    kp = _write(tmp_path / "k.json", {"images": [{"filename": "1.jpg", "split": "test", "sentences": []}]})
    assert CaptionImageDataset(load_annotations(kp), root / "flickr30k-images")[0][0].size == (20, 10)
    ds = CaptionImageDataset(load_annotations(kp), root)
    assert ds[0][0].size == (20, 10) and ds.subdirs == ["flickr30k-images"]
    with pytest.raises(MissingDataError, match="1.jpg"):
        CaptionImageDataset(load_annotations(path), tmp_path)


def test_a_list_file_of_your_own_images(tmp_path):
    """``path[,reference...]`` rows: ids are the file stems, or the path where two files share a stem; references
    may be absent (TTA without metrics); an image listed twice is an error naming it."""
    for rel in ("cat/1.jpg", "dog/1.jpg", "bird.jpg"):
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        Image.new("RGB", (8, 8)).save(tmp_path / rel)
    (tmp_path / "mine.csv").write_text("cat/1.jpg,a cat,a small cat\ndog/1.jpg,a dog\nbird.jpg\n")
    items = load_annotations(tmp_path / "mine.csv")
    assert [i.image_id for i in items] == ["cat/1", "dog/1", "bird"]
    assert [i.references for i in items] == [["a cat", "a small cat"], ["a dog"], []]
    (tmp_path / "twice.csv").write_text("bird.jpg,a bird\nbird.jpg,another\n")
    with pytest.raises(ValueError, match="'bird' is listed twice"):
        load_annotations(tmp_path / "twice.csv")
