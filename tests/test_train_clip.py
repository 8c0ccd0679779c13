"""Your own small CLIP: the trainer's options are checked when built, its label-aware loss against a hand
computation, and the command trains a tiny CLIP on a list dataset and on a folder, then reloads it."""
import json
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from open_clip.loss import ClipLoss
from PIL import Image
from torchvision import transforms as T

from conftest import make_clip
from tasks.common.augment import augment_batch
from tasks.common.train_clip import TrainConfig, TrainConfigError, label_aware_clip_loss, train_clip
from tasks.train_clip import main

FIX = Path(__file__).parent / "fixtures"


def test_options_fail_when_the_config_is_built():
    with pytest.raises(TrainConfigError, match="unknown augmentation 'rotate'"):
        TrainConfig(augment="rotate")
    with pytest.raises(TrainConfigError, match="batch_size"):
        TrainConfig(batch_size=1)
    assert TrainConfig(augment=lambda x, g: x).augment is not None
    assert TrainConfig(augment=T.RandomRotation(10)).augment is not None      # a torchvision transform


def test_no_flip_keeps_the_crop_and_never_mirrors():
    x = torch.linspace(0, 1, 16).view(1, 1, 1, 16).expand(8, 3, 16, 16).contiguous()   # a left-to-right ramp
    a = augment_batch(x, torch.Generator().manual_seed(0), "light", flip=False)
    b = augment_batch(x, torch.Generator().manual_seed(0), "light", flip=True)
    assert (a[:, 0, 8, -2] > a[:, 0, 8, 1]).all()                        # never mirrored
    assert ((b[:, 0, 8, -2] > b[:, 0, 8, 1]) != (a[:, 0, 8, -2] > a[:, 0, 8, 1])).any()   # flips do happen


def test_crop_scale_sets_the_crops_area_range():
    x = torch.rand(8, 3, 16, 16, generator=torch.Generator().manual_seed(1))
    whole = augment_batch(x, torch.Generator().manual_seed(0), "light", flip=False, crop_scale=(1.0, 1.0))
    assert torch.allclose(whole, x, atol=1e-5)                            # area 1: the image itself
    ramp = torch.linspace(0, 1, 48).view(1, 1, 1, 48).expand(64, 3, 48, 48).contiguous()
    span = {}
    for scale in ((0.6, 1.0), (0.08, 0.1)):   # the ramp's range inside a crop is its side, sqrt(area)
        a = augment_batch(ramp, torch.Generator().manual_seed(0), "light", flip=False, crop_scale=scale)
        span[scale] = (a[:, 0, 24, -1] - a[:, 0, 24, 0]) * 48 / 47
    assert span[(0.6, 1.0)].min() > 0.7 and span[(0.08, 0.1)].max() < 0.35
    with pytest.raises(TrainConfigError, match="crop_scale"):
        TrainConfig(crop_scale=(0.5, 0.2))


def test_label_aware_loss_by_hand():
    g = torch.Generator().manual_seed(0)
    img = F.normalize(torch.randn(4, 8, generator=g), dim=-1)
    txt = F.normalize(torch.randn(4, 8, generator=g), dim=-1)
    scale = torch.tensor(10.0)
    assert torch.allclose(label_aware_clip_loss(img, txt, scale, torch.arange(4)), ClipLoss()(img, txt, scale), atol=1e-6)
    labels = torch.tensor([0, 0, 1, 2])
    logits = scale * img @ txt.t()
    target = torch.tensor([[.5, .5, 0, 0], [.5, .5, 0, 0], [0, 0, 1, 0], [0, 0, 0, 1]])
    hand = 0.5 * (-(target * logits.log_softmax(1)).sum(1).mean() - (target * logits.t().log_softmax(1)).sum(1).mean())
    assert torch.allclose(label_aware_clip_loss(img, txt, scale, labels), hand, atol=1e-6)


def _images(folder: Path, n: int, size: int = 40) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    out = []
    for i in range(n):
        arr = (rng.random((size, size, 3)) * 255).astype("uint8")
        arr[..., i % 3] = 255
        Image.fromarray(arr).save(folder / f"{i}.png")
        out.append(folder / f"{i}.png")
    return out


def test_the_trainer_checks_image_size_and_batch_size():
    from tasks.common.clip import load_clip

    model, _, tok = load_clip("RLCF-Tiny-Test", None, config_file=FIX / "RLCF-Tiny-Test.json")
    tokens = tok(["a red image", "a green image", "a blue image", "x"]).view(4, 1, -1)
    with pytest.raises(TrainConfigError, match="model takes 32 x 32"):
        train_clip(model, torch.zeros(4, 3, 48, 48, dtype=torch.uint8), tokens, TrainConfig(steps=1, batch_size=2))
    with pytest.raises(TrainConfigError, match="larger than the 4 training images"):
        train_clip(model, torch.zeros(4, 3, 32, 32, dtype=torch.uint8), tokens, TrainConfig(steps=1, batch_size=8))


def test_command_trains_on_a_list_file_and_the_checkpoint_reloads(tmp_path):
    from tasks.common.clip import load_clip

    files = _images(tmp_path / "imgs", 12)
    colours = ["red", "green", "blue"]
    (tmp_path / "train.csv").write_text("path,caption,caption\n" + "".join(
        f"imgs/{f.name},a {colours[i % 3]} square,a photo of {colours[i % 3]}\n" for i, f in enumerate(files)))
    cfg = tmp_path / "MyTiny.json"
    cfg.write_text((FIX / "RLCF-Tiny-Test.json").read_text())
    pt = main(["--data", str(tmp_path / "train.csv"), "--config", str(cfg), "--out", str(tmp_path / "out"),
               "--steps", "6", "--batch-size", "4", "--lr", "1e-3", "--augment", "light", "--no-flip"])
    assert pt == tmp_path / "out" / "MyTiny.pt" and (tmp_path / "out" / "MyTiny.json").is_file()
    meta = json.loads((tmp_path / "out" / "MyTiny.train.json").read_text())
    assert meta["config"]["steps"] == 6 and meta["config"]["flip"] is False and np.isfinite(meta["final_loss"])
    trained = torch.load(pt)
    model, _, tok = load_clip("MyTiny", str(pt), config_file=tmp_path / "out" / "MyTiny.json")
    assert all(torch.equal(model.state_dict()[k], v) for k, v in trained.items())
    fresh, _, _ = load_clip("MyTiny", None, config_file=cfg)
    assert any(not torch.equal(fresh.state_dict()[k], v) for k, v in trained.items())   # it trained


def test_command_trains_label_aware_on_a_folder(tmp_path):
    for c in ("cat", "dog"):
        _images(tmp_path / "data" / c, 4)
    cfg = tmp_path / "MyTiny2.json"
    arch = json.loads((FIX / "RLCF-Tiny-Test.json").read_text())
    for tower in ("vision_cfg", "text_cfg"):   # negligible LayerNorm eps: --short-init can rescale exactly
        arch[tower]["norm_kwargs"] = {"eps": 1e-12}
    cfg.write_text(json.dumps(arch))
    pt = main(["--data", str(tmp_path / "data"), "--config", str(cfg), "--out", str(tmp_path / "out"),
               "--steps", "3", "--batch-size", "4", "--label-aware", "--augment", "none", "--short-init"])
    assert pt.is_file()
    emb = torch.load(pt)["token_embedding.weight"]      # trained at std ~1, saved at CLIP's scale
    assert abs(float(emb.float().std()) - 0.02) < 1e-6
    with pytest.raises(SystemExit) as e:   # a user error: one line, exit 2
        main(["--data", str(tmp_path / "nothing.csv"), "--config", str(cfg), "--steps", "1"])
    assert e.value.code == 2


@pytest.mark.parametrize("eps", [1e-12, 1e-5])
def test_rescale_text_tower_keeps_the_function_and_sets_clips_token_scale(eps, caplog):
    """Token embeddings of std 1 (init_for_short_training) -> CLIP's 0.02, features unchanged when eps is tiny."""
    import copy

    from tasks.common.train_clip import init_for_short_training, rescale_text_tower

    model, _, tok = make_clip("RLCF-Tiny-Test", 0)
    init_for_short_training(model)
    for m in [*model.transformer.modules(), model.ln_final]:
        if isinstance(m, torch.nn.LayerNorm):
            m.eps = eps
    tokens = tok(["a photo of a cat.", "a tree frog", "x"])
    before = model.encode_text(tokens, normalize=True).detach()
    visual = copy.deepcopy(model.visual.state_dict())
    c = rescale_text_tower(model, 0.02)
    assert abs(model.token_embedding.weight.std().item() - 0.02) < 1e-4 and 0.015 < c < 0.025
    after = model.encode_text(tokens, normalize=True).detach()
    if eps == 1e-12:
        assert torch.allclose(before, after, atol=1e-5) and not caplog.records
    else:   # open_clip's default eps is not negligible at CLIP's scale: features move, and it says so
        assert (before - after).abs().max() > 1e-4 and "eps" in caplog.text
    assert all(torch.equal(v, model.visual.state_dict()[k]) for k, v in visual.items())


def test_adam_on_the_rescaled_tower_equals_a_larger_lr_on_the_original():
    """Why the rescale makes the official prompt lrs mean what they mean on CLIP: Adam at lr on c * x follows
    Adam at lr / c on x (a context vector of the rescaled tower is c times the original's, its gradient 1/c)."""
    g = torch.Generator().manual_seed(0)
    target = torch.randn(16, generator=g)
    c, lr = 0.02, 7e-3

    def run(scale: float, rate: float) -> torch.Tensor:
        x = torch.nn.Parameter(torch.randn(16, generator=torch.Generator().manual_seed(1)) * scale)
        opt = torch.optim.AdamW([x], lr=rate, weight_decay=0.0, eps=1e-12)
        for _ in range(3):
            opt.zero_grad()
            ((x / scale - target) ** 2).sum().backward()
            opt.step()
        return x.detach() / scale

    assert torch.allclose(run(c, lr), run(1.0, lr / c), atol=1e-5)
    assert not torch.allclose(run(c, lr), run(1.0, lr), atol=1e-3)
