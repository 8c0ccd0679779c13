"""Classification loaders on miniature trees in each real on-disk format (tasks/classification/datasets.py)."""
from __future__ import annotations

import json
import pickle
from pathlib import Path

import pytest
from PIL import Image

from tasks.classification import datasets as D
from tasks.classification.datasets import DatasetLayoutError, build_dataset, list_datasets
from tasks.common.data import MissingDataError

# Appendix A of shared/spec/peers-and-data.md (TPT's imagenet_variants.py): the reference the timm lists must match.
SPEC_IMAGENET_A_200 = [
    6, 11, 13, 15, 17, 22, 23, 27, 30, 37, 39, 42, 47, 50, 57, 70, 71, 76, 79, 89, 90, 94, 96, 97, 99, 105,
    107, 108, 110, 113, 124, 125, 130, 132, 143, 144, 150, 151, 207, 234, 235, 254, 277, 283, 287, 291, 295,
    298, 301, 306, 307, 308, 309, 310, 311, 313, 314, 315, 317, 319, 323, 324, 326, 327, 330, 334, 335, 336,
    347, 361, 363, 372, 378, 386, 397, 400, 401, 402, 404, 407, 411, 416, 417, 420, 425, 428, 430, 437, 438,
    445, 456, 457, 461, 462, 470, 472, 483, 486, 488, 492, 496, 514, 516, 528, 530, 539, 542, 543, 549, 552,
    557, 561, 562, 569, 572, 573, 575, 579, 589, 606, 607, 609, 614, 626, 627, 640, 641, 642, 643, 658, 668,
    677, 682, 684, 687, 701, 704, 719, 736, 746, 749, 752, 758, 763, 765, 768, 773, 774, 776, 779, 780, 786,
    792, 797, 802, 803, 804, 813, 815, 820, 823, 831, 833, 835, 839, 845, 847, 850, 859, 862, 870, 879, 880,
    888, 890, 897, 900, 907, 913, 924, 932, 933, 934, 937, 943, 945, 947, 951, 954, 956, 957, 959, 971, 972,
    980, 981, 984, 986, 987, 988]
SPEC_IMAGENET_R_200 = [
    1, 2, 4, 6, 8, 9, 11, 13, 22, 23, 26, 29, 31, 39, 47, 63, 71, 76, 79, 84, 90, 94, 96, 97, 99, 100, 105,
    107, 113, 122, 125, 130, 132, 144, 145, 147, 148, 150, 151, 155, 160, 161, 162, 163, 171, 172, 178, 187,
    195, 199, 203, 207, 208, 219, 231, 232, 234, 235, 242, 245, 247, 250, 251, 254, 259, 260, 263, 265, 267,
    269, 276, 277, 281, 288, 289, 291, 292, 293, 296, 299, 301, 308, 309, 310, 311, 314, 315, 319, 323, 327,
    330, 334, 335, 337, 338, 340, 341, 344, 347, 353, 355, 361, 362, 365, 366, 367, 368, 372, 388, 390, 393,
    397, 401, 407, 413, 414, 425, 428, 430, 435, 437, 441, 447, 448, 457, 462, 463, 469, 470, 471, 472, 476,
    483, 487, 515, 546, 555, 558, 570, 579, 583, 587, 593, 594, 596, 609, 613, 617, 621, 629, 637, 657, 658,
    701, 717, 724, 763, 768, 774, 776, 779, 780, 787, 805, 812, 815, 820, 824, 833, 847, 852, 866, 875, 883,
    889, 895, 907, 928, 931, 932, 933, 934, 936, 937, 943, 945, 947, 948, 949, 951, 953, 954, 957, 963, 965,
    967, 980, 981, 983, 988]

WNIDS = D.imagenet_wnids()
OPENAI_NAMES = D._open_clip_metadata().IMAGENET_CLASSNAMES


def _img(path: Path, fmt: str = "JPEG") -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (8, 8), (len(path.name) * 20 % 255, 90, 30)).save(path, fmt)


def _class_tree(folder: Path, classes: list[str], n: int = 2, ext: str = ".JPEG") -> None:
    for c in classes:
        for k in range(n):
            _img(folder / c / f"img{k}{ext}", "PNG" if ext == ".png" else "JPEG")


def _labels(ds) -> dict[str, int]:
    return {ds.sample_id(i): ds.items[i][1] for i in range(len(ds))}


# ----------------------------------------------------------------------------- metadata
def test_timm_lists_equal_spec_appendix_a() -> None:
    assert list(D.imagenet_subset_indices("a")) == SPEC_IMAGENET_A_200
    assert list(D.imagenet_subset_indices("r")) == SPEC_IMAGENET_R_200
    assert len(set(SPEC_IMAGENET_A_200) & set(SPEC_IMAGENET_R_200)) == 86  # "A and R share only 86 classes"
    assert len(WNIDS) == 1000 and list(WNIDS) == sorted(WNIDS) and WNIDS[0] == "n01440764"
    assert len(OPENAI_NAMES) == 1000


def test_registry_ids_and_unknown_id() -> None:
    ids = list_datasets()
    assert ids[:6] == ["I", "A", "V", "R", "K", "C"]
    for tpt_id in ("Caltech101", "DTD", "eurosat", "Flower102", "Food101", "Pets", "Cars", "SUN397", "UCF101",
                   "Aircraft"):
        assert tpt_id in ids
        assert D.canonical_id(tpt_id.upper())[0] == tpt_id
    assert D.canonical_id("imagenet-a")[0] == "A" and D.canonical_id("oxford_pets")[0] == "Pets"
    assert D.canonical_id("c/gaussian_noise/5") == ("C", ["gaussian_noise", "5"])
    with pytest.raises(KeyError, match="Aircraft") as e:
        build_dataset("imagenet-z", ".")
    assert "I, A, V, R, K, C" in str(e.value)


def test_templates_and_name_sources(tmp_path: Path) -> None:
    assert D.resolve_templates("single") == ["a photo of a {}."]
    meta = D._open_clip_metadata()
    assert D.resolve_templates("openai") == [t("{}") for t in meta.OPENAI_IMAGENET_TEMPLATES]  # 80, as strings
    assert D.resolve_templates("simple") == [t("{}") for t in meta.SIMPLE_IMAGENET_TEMPLATES]  # 7
    assert D.resolve_templates("coop", "{} texture.") == ["{} texture."]
    assert D.resolve_templates("a sketch of a {}.") == ["a sketch of a {}."]
    with pytest.raises(ValueError):
        D.resolve_templates("nope")
    assert D.imagenet_classnames("wordnet", [0, 999]) == ["tench", "toilet tissue"]
    f = tmp_path / "classnames.txt"  # CoOp's imagenet/classnames.txt: "<wnid> <name>" lines
    f.write_text(f"{WNIDS[1]} gold fish\n{WNIDS[6]} my ray\n")
    assert D.imagenet_classnames(str(f), [1, 6]) == ["gold fish", "my ray"]
    with pytest.raises(ValueError, match="json"):
        D.imagenet_classnames("json", [0])
    with pytest.raises(MissingDataError, match="no_such_file"):
        D.imagenet_classnames(str(tmp_path / "no_such_file.txt"), [0])


# ----------------------------------------------------------------------------- ImageNet family
@pytest.mark.parametrize("layout", ["ImageNet/val", "imagenet/images/val"])
def test_imagenet_val_labels(tmp_path: Path, layout: str) -> None:
    _class_tree(tmp_path / layout, [WNIDS[0], WNIDS[5], WNIDS[999]])
    (tmp_path / layout / "README.txt").write_text("stray")
    (tmp_path / layout / WNIDS[5] / ".DS_Store").write_text("stray")
    ds = build_dataset("I", tmp_path, strict=False)
    assert _labels(ds) == {f"{w}/img{k}.JPEG": y for y, w in ((0, WNIDS[0]), (5, WNIDS[5]), (999, WNIDS[999]))
                           for k in range(2)}
    assert ds.classnames == list(OPENAI_NAMES) and ds.class_indices == list(range(1000))
    img, label, i = ds[4]
    assert img.mode == "RGB" and img.size == (8, 8) and (label, i) == (999, 4)
    with pytest.raises(MissingDataError, match="997 of 1000 class folders missing"):
        build_dataset("imagenet", tmp_path)  # strict by default


@pytest.mark.parametrize("subset, spec", [("A", SPEC_IMAGENET_A_200), ("R", SPEC_IMAGENET_R_200)])
def test_imagenet_a_r_mask(tmp_path: Path, subset: str, spec: list[int]) -> None:
    folder = tmp_path / f"imagenet-{subset.lower()}"
    picked = [0, 57, 199]  # labels in the 200-class space
    _class_tree(folder, [WNIDS[spec[y]] for y in picked], ext=".jpg")
    (folder / "README.txt").write_text("ImageNet-A/R readme: must be ignored")
    ds = build_dataset(subset, tmp_path, transform=lambda im: im.size, strict=False)
    assert sorted(set(_labels(ds).values())) == picked
    assert ds.class_indices == spec and ds.wnids == [WNIDS[i] for i in spec]
    assert ds.classnames == [OPENAI_NAMES[i] for i in spec]
    for y in picked:
        assert _labels(ds)[f"{WNIDS[spec[y]]}/img0.jpg"] == y
    assert ds[0] == ((8, 8), 0, 0)
    ds = build_dataset(subset.lower(), tmp_path, templates="openai", strict=False)
    clone = pickle.loads(pickle.dumps(ds))  # DataLoader workers under spawn pickle the dataset
    assert clone.items == ds.items and len(clone.templates) == 80 and clone.class_indices == spec
    names = tmp_path / "names1000.txt"  # a 1000-line names file is restricted by the mask
    names.write_text("\n".join(f"class{i}" for i in range(1000)))
    ds = build_dataset(subset, tmp_path, classnames_source=str(names), strict=False)
    assert ds.classnames == [f"class{i}" for i in spec]


def test_imagenet_a_unknown_folder_and_missing_root(tmp_path: Path) -> None:
    with pytest.raises(MissingDataError) as e:
        build_dataset("A", tmp_path)
    assert str(tmp_path / "imagenet-a") in str(e.value) and "200 wnid folders" in str(e.value)
    _class_tree(tmp_path / "imagenet-a", [WNIDS[6], WNIDS[0]])  # class 0 (tench) is not an ImageNet-A class
    with pytest.raises(DatasetLayoutError, match=WNIDS[0]):
        build_dataset("A", tmp_path, strict=False)
    with pytest.raises(MissingDataError, match="data root"):
        build_dataset("A", tmp_path / "nowhere")


def test_imagenet_v2_numeric_labels_not_string_order(tmp_path: Path) -> None:
    folder = tmp_path / "imagenetv2-matched-frequency-format-val"
    _class_tree(folder, ["0", "1", "2", "10", "100"], n=1, ext=".jpeg")
    ds = build_dataset("V", tmp_path, strict=False)
    labels = _labels(ds)
    assert labels == {"0/img0.jpeg": 0, "1/img0.jpeg": 1, "2/img0.jpeg": 2, "10/img0.jpeg": 10,
                      "100/img0.jpeg": 100}
    assert sorted(p.name for p in folder.iterdir()).index("10") == 2  # the trap: ImageFolder's string order
    assert ds.classnames[10] == OPENAI_NAMES[10]
    assert sorted(range(1000), key=str)[:4] == [0, 1, 10, 100]  # spec's V mask, for the record
    _class_tree(folder, ["010"], n=1)
    with pytest.raises(DatasetLayoutError, match="010"):
        build_dataset("V", tmp_path, strict=False)


@pytest.mark.parametrize("layout", ["ImageNet-Sketch/sketch", "ImageNet-Sketch", "imagenet-sketch/images"])
def test_imagenet_sketch_layouts(tmp_path: Path, layout: str) -> None:
    _class_tree(tmp_path / layout, [WNIDS[3], WNIDS[300]], n=1, ext=".png")
    ds = build_dataset("K", tmp_path, strict=False)
    assert _labels(ds) == {f"{WNIDS[3]}/img0.png": 3, f"{WNIDS[300]}/img0.png": 300}
    assert build_dataset("s", tmp_path, strict=False).set_id == "K"  # TDA/DPE's id


def test_imagenet_c(tmp_path: Path) -> None:
    _class_tree(tmp_path / "imagenet-c" / "gaussian_noise" / "5", [WNIDS[2]], n=1)
    ds = build_dataset("C/gaussian_noise/5", tmp_path, strict=False)
    assert ds.set_id == "C/gaussian_noise/5" and _labels(ds) == {f"{WNIDS[2]}/img0.JPEG": 2}
    ds = build_dataset("imagenet-c", tmp_path, corruption="gaussian_noise", severity=5, strict=False)
    assert len(ds) == 1
    with pytest.raises(MissingDataError, match="gaussian_noise"):  # lists the corruptions found
        build_dataset("C/gaussian_noise/3", tmp_path, strict=False)
    with pytest.raises(ValueError, match="corruption"):
        build_dataset("C", tmp_path)


# ----------------------------------------------------------------------------- CoOp split JSONs
def _split_json(path: Path, test: list, train: list | None = None) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"train": train or [], "val": [], "test": test}))


PETS_TEST = [["abyssinian_1.jpg", 0, "abyssinian"], ["american_bulldog_2.jpg", 1, "american_bulldog"],
             ["yorkshire_terrier_3.jpg", 2, "yorkshire_terrier"], ["abyssinian_4.jpg", 0, "abyssinian"]]


@pytest.mark.parametrize("coop", [True, False])
def test_coop_json_pets_both_layouts(tmp_path: Path, coop: bool) -> None:
    if coop:  # CoOp: oxford_pets/{images/, split_zhou_OxfordPets.json}
        image_root, json_path = tmp_path / "oxford_pets/images", tmp_path / "oxford_pets/split_zhou_OxfordPets.json"
    else:  # TPT: OxfordPets/<images> with the JSON in data_splits/
        image_root, json_path = tmp_path / "OxfordPets", tmp_path / "data_splits" / "split_zhou_OxfordPets.json"
    for rel, _, _ in PETS_TEST:
        _img(image_root / rel)
    _split_json(json_path, PETS_TEST, train=[["x.jpg", 3, "beagle"]])
    ds = build_dataset("pets", tmp_path)
    assert [(ds.sample_id(i), ds.items[i][1]) for i in range(len(ds))] == [(p, y) for p, y, _ in PETS_TEST]
    assert ds.classnames == ["abyssinian", "american bulldog", "yorkshire terrier", "beagle"]
    assert ds.templates == ["a photo of a {}."] and ds.split == "test" and ds.class_indices is None
    assert build_dataset("Pets", tmp_path, templates="coop").templates == ["a photo of a {}, a type of pet."]
    img, label, i = ds[1]
    assert img.mode == "RGB" and (label, i) == (1, 1)
    names = tmp_path / "pets_names.txt"
    names.write_text("Abyssinian\nAmerican Bulldog\nYorkshire Terrier\nBeagle\n")
    assert build_dataset("Pets", tmp_path, classnames_source=str(names)).classnames[1] == "American Bulldog"
    with pytest.raises(ValueError, match="wordnet"):
        build_dataset("Pets", tmp_path, classnames_source="wordnet")


def test_coop_json_cars_root_and_missing_files(tmp_path: Path) -> None:
    test = [["cars_test/00001.jpg", 0, "AM General Hummer SUV 2000"], ["cars_test/00002.jpg", 1, "Acura RL Sedan 2012"]]
    _img(tmp_path / "stanford_cars" / "cars_test" / "00001.jpg")
    _split_json(tmp_path / "stanford_cars" / "split_zhou_StanfordCars.json", test)
    with pytest.raises(MissingDataError, match="1 of 2 images missing"):
        build_dataset("Cars", tmp_path)
    ds = build_dataset("stanfordcars", tmp_path, strict=False)
    assert ds.root == tmp_path / "stanford_cars" and _labels(ds) == {"cars_test/00001.jpg": 0}
    assert ds.classnames == ["AM General Hummer SUV 2000", "Acura RL Sedan 2012"]


def test_coop_json_missing_dataset_and_split(tmp_path: Path) -> None:
    with pytest.raises(MissingDataError) as e:
        build_dataset("Flower102", tmp_path)
    assert str(tmp_path / "oxford_flowers") in str(e.value) and "split_zhou_OxfordFlowers.json" in str(e.value)
    (tmp_path / "dtd" / "images").mkdir(parents=True)
    with pytest.raises(MissingDataError, match="split_zhou_DescribableTextures.json"):
        build_dataset("DTD", tmp_path)
    _img(tmp_path / "dtd" / "images" / "banded" / "b.jpg")
    split = tmp_path / "elsewhere.json"
    _split_json(split, [["banded/b.jpg", 0, "banded"]])
    ds = build_dataset("describabletextures", tmp_path, split_file=split, templates="coop")
    assert _labels(ds) == {"banded/b.jpg": 0} and ds.templates == ["{} texture."]
    with pytest.raises(DatasetLayoutError, match="split 'dev'"):
        build_dataset("DTD", tmp_path, split_file=split, split="dev")


# ----------------------------------------------------------------------------- FGVC-Aircraft
@pytest.mark.parametrize("layout", ["fgvc-aircraft-2013b/data", "fgvc_aircraft"])
def test_aircraft(tmp_path: Path, layout: str) -> None:
    d = tmp_path / layout
    d.mkdir(parents=True)
    (d / "variants.txt").write_text("707-320\nA300B4\nF/A-18\nBoeing 717\n")
    (d / "images_variant_test.txt").write_text("1514522 F/A-18\n0056978 707-320\n1234567 Boeing 717\n")
    for image_id in ("1514522", "0056978", "1234567"):
        _img(d / "images" / f"{image_id}.jpg")
    ds = build_dataset("Aircraft", tmp_path)
    assert _labels(ds) == {"images/1514522.jpg": 2, "images/0056978.jpg": 0, "images/1234567.jpg": 3}
    assert ds.classnames == ["707-320", "A300B4", "F/A-18", "Boeing 717"]
    assert build_dataset("fgvc_aircraft", tmp_path, templates="coop").templates == [
        "a photo of a {}, a type of aircraft."]
    (d / "images_variant_test.txt").write_text("1514522 Concorde\n")
    with pytest.raises(DatasetLayoutError, match="Concorde"):
        build_dataset("Aircraft", tmp_path)


def test_aircraft_missing(tmp_path: Path) -> None:
    with pytest.raises(MissingDataError) as e:
        build_dataset("aircraft", tmp_path)
    assert str(tmp_path / "fgvc_aircraft") in str(e.value) and "images_variant_test.txt" in str(e.value)


# ----------------------------------------------------------------------------- pre-flight check
def test_check_catches_a_wrong_image_folder_in_under_5_s(tmp_path: Path, capsys) -> None:
    """``tasks.classification.check``: Pets' split JSON is there, its images were unpacked into ``imgs/`` instead
    of ``images/``; the check names the missing image paths, before any model is built."""

    from tasks.classification.check import main

    for rel, _, _ in PETS_TEST:
        _img(tmp_path / "oxford_pets" / "imgs" / rel)
    _split_json(tmp_path / "oxford_pets" / "split_zhou_OxfordPets.json", PETS_TEST)
    args = [f"data.root={tmp_path}", "data.set_id=Pets", "model.pretrained=null", "reward.pretrained=null"]
    rc = main(args)
    err = capsys.readouterr().err
    assert rc == 1
    assert "abyssinian_1.jpg" in err and str(tmp_path / "oxford_pets") in err and err.startswith("ERROR: dataset Pets")
    (tmp_path / "oxford_pets" / "imgs").rename(tmp_path / "oxford_pets" / "images")
    assert main(args) == 0
    (tmp_path / "oxford_pets" / "images" / "abyssinian_4.jpg").write_text("not an image")   # a random probe opens it
    assert main(args) == 1 and "abyssinian_4.jpg" in capsys.readouterr().err
