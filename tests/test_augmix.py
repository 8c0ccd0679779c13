"""The official AugMix (TPT's augmix_ops at severity 1) against a restatement of its formulas, and the
facts that make torchvision's AugMix(severity=1) a different, weaker op set."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image, ImageOps
from torchvision import transforms as T

from tasks.classification.augmix import OPS, apply_op, augmix_view
from tasks.classification.views import ViewTransform


def _img(size: int = 224, seed: int = 0) -> Image.Image:
    rng = np.random.default_rng(seed)
    return Image.fromarray((rng.random((size, size, 3)) * 255).astype("uint8"))


def test_official_op_list_and_order():
    assert [op.__name__ for op in OPS] == ["autocontrast", "equalize", "posterize", "rotate", "solarize",
                                           "shear_x", "shear_y", "translate_x", "translate_y"]
    with pytest.raises(KeyError, match="official ops"):
        apply_op("color", _img(8), np.random.default_rng(0))


def _official(name: str, img: Image.Image, rng: np.random.Generator) -> Image.Image:
    """augmix_ops.py at severity 1: level u ~ U(0.1, 1); int_parameter = int(u * max / 10); float_parameter =
    u * max / 10; a sign flip with probability 1/2 for rotate, shear, translate; bilinear resampling."""
    u = rng.uniform(0.1, 1.0)
    if name == "posterize":
        return ImageOps.posterize(img, 4 - int(u * 4 / 10))
    if name == "solarize":
        return ImageOps.solarize(img, 256 - int(u * 256 / 10))
    if name == "rotate":
        deg = int(u * 30 / 10)
        deg = -deg if rng.uniform() > 0.5 else deg
        return img.rotate(deg, resample=Image.BILINEAR)
    if name.startswith("shear"):
        s = u * 0.3 / 10
        s = -s if rng.uniform() > 0.5 else s
        coeffs = (1, s, 0, 0, 1, 0) if name == "shear_x" else (1, 0, 0, s, 1, 0)
        return img.transform((224, 224), Image.AFFINE, coeffs, resample=Image.BILINEAR)
    t = int(u * (224 / 3) / 10)
    t = -t if rng.uniform() > 0.5 else t
    coeffs = (1, 0, t, 0, 1, 0) if name == "translate_x" else (1, 0, 0, 0, 1, t)
    return img.transform((224, 224), Image.AFFINE, coeffs, resample=Image.BILINEAR)


@pytest.mark.parametrize("name", ["posterize", "solarize", "rotate", "shear_x", "shear_y", "translate_x",
                                  "translate_y"])
def test_each_op_equals_the_official_formula_at_224(name):
    img = _img()
    for seed in range(6):
        got = apply_op(name, img, np.random.default_rng(seed))
        want = _official(name, img, np.random.default_rng(seed))
        assert np.array_equal(np.asarray(got), np.asarray(want)), (name, seed)


def test_severity_one_magnitudes():
    """The ranges the facts state: posterize always 4 bits, rotate 0-2 degrees, solarize 231-254,
    shear < 0.03, translate 0-7 px at 224."""
    rng = np.random.default_rng(0)
    u = rng.uniform(0.1, 1.0, size=20000)
    assert set((4 - (u * 4 / 10).astype(int)).tolist()) == {4}
    assert set((u * 30 / 10).astype(int).tolist()) == {0, 1, 2}
    th = 256 - (u * 256 / 10).astype(int)
    assert th.min() == 231 and th.max() == 254
    assert (u * 0.3 / 10).max() < 0.03
    assert set((u * (224 / 3) / 10).astype(int).tolist()) == set(range(8))


def test_torchvision_augmix_severity_one_is_magnitude_zero():
    """torchvision draws the bin with randint(severity): at severity 1 always bin 0, where every
    geometric magnitude is 0 and solarize's threshold is 255 (no-ops): not the official op set."""
    aug = T.AugMix(severity=1, all_ops=False)
    space = aug._augmentation_space(aug._PARAMETER_MAX, (224, 224))
    assert all(int(torch.randint(aug.severity, ())) == 0 for _ in range(50))
    for op in ("Rotate", "ShearX", "ShearY", "TranslateX", "TranslateY"):
        assert float(space[op][0][0]) == 0.0, op
    assert float(space["Solarize"][0][0]) == 255.0
    assert "Posterize" in space and int(space["Posterize"][0][0]) == 4   # bits kept at bin 0
    img = _img(32)
    x = torch.from_numpy(np.array(img)).permute(2, 0, 1)
    assert torch.equal(T.functional.rotate(x, 0.0), x)


def test_augmix_view_mixes_after_normalisation():
    """m * pre(crop) + (1 - m) * sum_i w_i * pre(chain_i(crop)), w ~ Dirichlet(1,1,1), m ~ Beta(1,1),
    3 chains of 1-3 ops drawn from the official list."""
    crop = _img(32, 1)
    pre = T.Compose([T.ToTensor(), T.Normalize((0.5, 0.5, 0.5), (0.25, 0.25, 0.25))])
    got = augmix_view(crop, pre, np.random.default_rng(7))
    rng = np.random.default_rng(7)
    x = pre(crop)
    w = rng.dirichlet([1.0, 1.0, 1.0]).astype(np.float32)
    m = float(np.float32(rng.beta(1.0, 1.0)))
    mix = torch.zeros_like(x)
    for i in range(3):
        aug = crop.copy()
        for _ in range(int(rng.integers(1, 4))):
            aug = OPS[int(rng.integers(len(OPS)))](aug, rng, 1)
        mix += float(w[i]) * pre(aug)
    assert torch.allclose(got, m * x + (1 - m) * mix)
    assert not torch.allclose(got, x)


def test_view_transform_uses_the_official_augmix_by_default():
    img = _img(48, 2)
    official = ViewTransform(n_views=4, resolution=32, augmix=True)
    assert official.augmix == "official"
    plain = ViewTransform(n_views=4, resolution=32)
    tv = ViewTransform(n_views=4, resolution=32, augmix="torchvision")
    a, b, c = official(img, seed=3), plain(img, seed=3), tv(img, seed=3)
    assert torch.equal(a[0], b[0]) and torch.equal(a[0], c[0])          # clean view untouched
    assert not torch.allclose(a[1:], b[1:]) and torch.equal(official(img, seed=3), a)
    no_flip = ViewTransform(n_views=6, resolution=32, flip=False, scale=(1.0, 1.0))
    v = no_flip(Image.fromarray(np.tile(np.arange(48, dtype=np.uint8)[None, :, None], (48, 1, 3))), seed=0)
    assert (v[1:, 0, 0, 0] < v[1:, 0, 0, -1]).all()                      # left-to-right ramp never mirrored
    with pytest.raises(ValueError, match="augmix"):
        ViewTransform(augmix="strong")
