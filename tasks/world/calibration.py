"""The world's calibration report: is it in the regime the paper's methods are built for? Measured before any
adaptation, with ``rlcf diagnose``'s measurements (:mod:`tasks.classification.diagnose`) on the views a run sees.

:func:`measure` gives, per split, the policy's and the teacher's zero-shot top-1 on every sample and the headroom
measurements (top-K recall, the teacher's re-ranking, the confident-view vote, ECE) on a seeded subset;
:func:`target_checks` reads the world's targets off them:

* policy clean ``val`` 60-80 %; the teacher at least 6 points above it on ``val`` and 12 on the OOD average
  (the paper: ViT-B/16 66.7 on ImageNet, ViT-L/14 +6.7 clean and +12.8 OOD);
* the policy's OOD average at least 60 % of its ``val`` and no OOD split below 35 % of it (the paper: 86 % on
  average, ImageNet-Sketch 69 %);
* the policy's top-3 recall on every OOD split at least its top-1 + 15 points;
* confident views informative: on every split, the policy's vote over its 10 % most confident views at least its
  clean-view top-1 (ZERO with ViT-B/16: ImageNet 69.3 against 66.7);
* at least one held-out shift family: no training augmentation of either model imitates it.
"""
from __future__ import annotations

from typing import Callable, Sequence

import numpy as np
import torch
from torch import Tensor

from ..classification.diagnose import diagnose_sample, summarize
from ..classification.views import ViewTransform
from ..common.clip import zero_shot_classifier
from .splits import WorldConfig, build_world_dataset, load_split_tensors
from .train import normalize

__all__ = ["OOD", "HELD_OUT", "measure", "target_checks", "report"]

OOD = ("v2", "sketch", "rendition", "adversarial")
#: shift families that no training augmentation of the world's models imitates (tasks/common/augment.py)
HELD_OUT = ("rendition", "adversarial")


class _Model:
    """A world CLIP as a zero-shot classifier: ``logits(views [N, 3, S, S]) -> [N, C]``."""

    def __init__(self, model: torch.nn.Module, tokenizer: Callable, classnames: Sequence[str]) -> None:
        self.model = model.eval()
        self.text = zero_shot_classifier(model, tokenizer, classnames)
        self.scale = model.logit_scale.exp().float()

    @torch.no_grad()
    def logits(self, x: Tensor) -> Tensor:
        f = self.model.encode_image(x).float()
        return self.scale * torch.nn.functional.normalize(f, dim=-1) @ self.text.T


@torch.no_grad()
def measure(policy: tuple, teacher: tuple, splits: Sequence[str], data_root, world: WorldConfig, limit: int = 200,
            n_views: int = 32, k: int = 3, selection: float = 0.1) -> dict[str, dict]:
    """Per split: ``{"policy", "teacher"}`` zero-shot top-1 on every sample (%) and ``"headroom"``: the
    :func:`~tasks.classification.diagnose.summarize` measurements on ``limit`` samples (seeded, the same for every
    model seed) with ``n_views`` views as the world's configs make them (view 0 clean, seeded per sample).

    ``policy`` / ``teacher``: ``(model, tokenizer)`` of the world's open_clip models."""
    p, t = (_Model(m, tok, world.classnames) for m, tok in (policy, teacher))
    out: dict[str, dict] = {}
    for split in splits:
        images, labels, _ = load_split_tensors(split, data_root, world=world)
        x = normalize(images)
        row = {name: float(100 * (torch.cat([m.logits(x[i:i + 256]) for i in range(0, len(x), 256)]).argmax(-1)
                                  == labels).float().mean()) for name, m in (("policy", p), ("teacher", t))}
        ds = build_world_dataset(split, data_root, world=world)
        views = ViewTransform(n_views, world.image_size, mean=policy[0].visual.image_mean,
                              std=policy[0].visual.image_std)
        order = np.random.default_rng(0).permutation(len(ds))[:limit]
        recs = []
        for i in order.tolist():
            v = views(ds.load(i), seed=i)
            recs.append(diagnose_sample(p.logits(v), t.logits(v), int(ds.items[i][1]), k, selection))
        row["headroom"] = summarize(recs)
        out[split] = row
    return out


def target_checks(table: dict[str, dict]) -> list[tuple[str, bool, str]]:
    """``(target, met, value)`` of every target the measured ``table`` (:func:`measure`) covers."""
    if "val" not in table:
        return []
    pv, tv = table["val"]["policy"], table["val"]["teacher"]
    ood = [s for s in OOD if s in table]
    out = [("policy clean val in [60, 80] %", 60 <= pv <= 80, f"{pv:.1f}"),
           ("teacher >= policy + 6 on clean val", tv - pv >= 6, f"{tv - pv:+.1f}")]
    if ood:
        p_ood = float(np.mean([table[s]["policy"] for s in ood]))
        t_ood = float(np.mean([table[s]["teacher"] for s in ood]))
        worst = min(ood, key=lambda s: table[s]["policy"])
        out += [("teacher >= policy + 12 on the OOD average", t_ood - p_ood >= 12, f"{t_ood - p_ood:+.1f}"),
                ("policy OOD average >= 60 % of its val", p_ood >= 0.6 * pv, f"{100 * p_ood / pv:.0f} %"),
                ("no OOD split below 35 % of val", table[worst]["policy"] >= 0.35 * pv,
                 f"{worst} {100 * table[worst]['policy'] / pv:.0f} %")]
        margin = {s: table[s]["headroom"]["topk"] - table[s]["headroom"]["top1"] for s in ood}
        low = min(margin, key=margin.get)
        out.append(("top-3 recall >= top-1 + 15 on every OOD split", margin[low] >= 15, f"{low} {margin[low]:+.1f}"))
    vote = {s: r["headroom"]["vote"] - r["headroom"]["top1"] for s, r in table.items()}
    low = min(vote, key=vote.get)
    out.append(("confident-view vote >= clean top-1 on every split", vote[low] >= 0, f"{low} {vote[low]:+.1f}"))
    held = [s for s in HELD_OUT if s in table]
    out.append(("a held-out shift family among the OOD splits", bool(held), ", ".join(held) or "none"))
    return out


def report(table: dict[str, dict]) -> str:
    """The calibration table (rows: measures, columns: splits) and the target lines."""
    from ..classification.diagnose import ROWS

    splits = list(table)
    n = table[splits[0]]["headroom"]["n"]
    lines = ["| measure | " + " | ".join(splits) + " |", "|---|" + "---:|" * len(splits),
             "| policy zero-shot top-1, every sample | " + " | ".join(f"{table[s]['policy']:.1f}" for s in splits) + " |",
             "| teacher zero-shot top-1, every sample | " + " | ".join(f"{table[s]['teacher']:.1f}" for s in splits) + " |"]
    for key, label in ROWS:
        lines.append(f"| {label}, {n} samples | " + " | ".join(f"{table[s]['headroom'][key]:.1f}" for s in splits) + " |")
    lines.append("")
    lines += [f"target: {what}: {'yes' if ok else 'NO'} ({value})" for what, ok, value in target_checks(table)]
    return "\n".join(lines) + "\n"
