"""``rlcf diagnose``: how much a dataset leaves for test-time adaptation to gain, measured before any adaptation.

    rlcf diagnose --config configs/classification/rlcf-tune.yaml data.set_id=A/V/R run.limit=500

It reads the same config as ``rlcf run classification`` (policy, reward, data, views, ``adapt.k``,
``adapt.selection``) and measures per set, with no gradient step and no method, on the same seeded views a run
sees:

==============================  ==============================================================================
``top1``                        the policy's zero-shot top-1 on the clean view (view 0)
``teacher``                     the reward model's zero-shot top-1 on the clean view
``topk``                        the policy's top-K recall on the clean view (K = ``adapt.k``)
``rerank``                      the reward re-ranks the policy's top-K on the clean view (its argmax among them)
``rerank_views``                the same on each confident view (the ``adapt.selection`` most confident, TPT's
                                rule: what RLCF's reward scores), majority vote over those views
``vote``                        the policy's one-hot vote over its confident views (ZERO's rule, same fraction)
``teacher_views``               the reward's mean probability over all views
``ece``                         the policy's expected calibration error on the clean view (20 bins)
==============================  ==============================================================================

and ends with a one-line reading (:func:`reading`). Each set is a resumable runner unit (records under
``<run.out_dir>/<set>``, default ``output/diagnose``), so a killed diagnosis resumes and ``torchrun`` shards it.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
from torch import Tensor

from rlcf.losses import select_confident
from rlcf.policy import Episode

from ..common import cli
from ..common.clip import build_clip, resolve_device
from ..common.config import for_set
from ..common.metrics import bootstrap_ci, expected_calibration_error
from ..methods.zero_vote import zero_vote
from .run import preflight, split_set_ids
from .task import DEFAULTS as RUN_DEFAULTS
from .task import build_dataset_from_config, build_policy, build_reward, build_views, meanings

__all__ = ["DEFAULTS", "ROWS", "diagnose_sample", "summarize", "reading", "table", "DiagnoseTask", "main"]

DEFAULTS = {**RUN_DEFAULTS, "method": "zeroshot", "run": {**RUN_DEFAULTS["run"], "out_dir": "output/diagnose"}}

#: (record key, row label): the table's rows, in order
ROWS = [
    ("top1", "policy top-1 (clean view)"),
    ("teacher", "teacher top-1 (clean view)"),
    ("topk", "policy top-K recall (clean view)"),
    ("rerank", "teacher re-ranks the policy's top-K (clean view)"),
    ("rerank_views", "teacher re-ranks the policy's top-K on the confident views, majority vote (RLCF's reward)"),
    ("vote", "policy vote over its confident views (ZERO's rule)"),
    ("teacher_views", "teacher, mean over all views"),
    ("ece", "policy ECE % (clean view)"),
]


def _majority(picks: Sequence[int]) -> int:
    """The most frequent of ``picks``; a tie goes to the tied class picked first (the most confident view's)."""
    counts: dict[int, int] = {}
    for p in picks:
        counts[p] = counts.get(p, 0) + 1
    best = max(counts.values())
    return next(p for p in picks if counts[p] == best)


@torch.no_grad()
def diagnose_sample(policy_logits: Tensor, teacher_logits: Tensor, label: int, k: int, selection: float) -> dict:
    """One sample's record from the logits of every view.

    Args:
        policy_logits: ``[V, C]`` the policy's logits, view 0 the clean view.
        teacher_logits: ``[V, C]`` the reward model's logits (or scores: only their order and softmax are read).
        label: the true class.
        k: candidates per view (RLCF's K).
        selection: the kept fraction of the most confident views (TPT's rule; at least one view).
    Returns:
        ``{"label", "pred", "confidence", "teacher", "topk", "rerank", "rerank_views", "vote", "teacher_views",
        "selected"}``: class indices, except ``confidence`` (the policy's max softmax on view 0), ``topk``
        (the policy's top-K classes on view 0) and ``selected`` (the confident views, most confident first).
    """
    p, t = policy_logits.float(), teacher_logits.float()
    k = min(k, p.shape[-1])
    topk = p[0].topk(k).indices
    selected = select_confident(p, selection)
    picks = []
    for v in selected.tolist():
        cand = p[v].topk(k).indices
        picks.append(int(cand[t[v, cand].argmax()]))
    return {"label": int(label), "pred": int(p[0].argmax()), "confidence": float(p[0].softmax(-1).max()),
            "teacher": int(t[0].argmax()), "topk": topk.tolist(), "rerank": int(topk[t[0, topk].argmax()]),
            "rerank_views": _majority(picks), "vote": int(zero_vote(p, selection).argmax()),
            "teacher_views": int(t.softmax(-1).mean(0).argmax()), "selected": selected.tolist()}


def summarize(records: Sequence[dict]) -> dict:
    """Percentages of the :data:`ROWS` over ``records`` (those without an ``"error"``), ``n`` and the 95% bootstrap
    CI of the policy's top-1."""
    recs = [r for r in records if "error" not in r]
    if not recs:
        return {"n": 0, **{key: float("nan") for key, _ in ROWS}}
    label = np.array([r["label"] for r in recs])

    def acc(key: str) -> float:
        return float(100 * np.mean(np.array([r[key] for r in recs]) == label))

    correct = np.array([r["pred"] for r in recs]) == label
    out = {key: acc(key) for key in ("teacher", "rerank", "rerank_views", "vote", "teacher_views")}
    out.update(n=len(recs), top1=float(100 * correct.mean()),
               topk=float(100 * np.mean([r["label"] in r["topk"] for r in recs])),
               ece=float(100 * expected_calibration_error([r["confidence"] for r in recs], correct)),
               top1_ci95=list(bootstrap_ci(correct.astype(float) * 100)))
    return out


def reading(stats: dict[str, dict], margin: float = 2.0) -> str:
    """One line on what the numbers of :func:`summarize` per set (``{set: stats}``) say about view-based TTA with a
    CLIP reward. A difference counts when it exceeds ``margin`` points; the first finding that holds wins:

    1. the teacher is not better than the policy (clean view): a reward (RLCF, KD) has nothing to teach;
    2. confident views mislead (their vote is below the clean view's top-1): view-based TTA is unlikely to help;
    3. the top-K barely holds more than the top-1: re-ranking has little to work with;
    4. the teacher's re-ranking on the confident views is not above the policy: the reward carries little signal;
    5. otherwise: the headroom, the reward's re-ranking gain on the confident views.
    """
    def where(sets: list[str]) -> str:
        return "every set" if len(sets) == len(stats) else ", ".join(sets)

    def gap(a: str, b: str) -> dict[str, float]:
        return {s: m[a] - m[b] for s, m in stats.items()}

    weak = [s for s, g in gap("teacher", "top1").items() if g <= margin]
    if len(weak) > len(stats) / 2:
        return (f"reading: the teacher is not stronger than the policy on {where(weak)}: a CLIP reward (RLCF, KD) "
                "has little to teach here")
    mislead = [s for s, g in gap("vote", "top1").items() if g < -margin]
    if len(mislead) > len(stats) / 2:
        return (f"reading: confident views mislead on {where(mislead)} (the policy's vote over them is below its "
                "clean view): view-based TTA (TPT, ZERO, RLCF) is unlikely to help here")
    narrow = [s for s, g in gap("topk", "top1").items() if g <= 2 * margin]
    if len(narrow) > len(stats) / 2:
        return (f"reading: the right class is rarely in the policy's top-K beyond its top-1 on {where(narrow)}: "
                "re-ranking (RLCF) has little to work with")
    flat = [s for s, g in gap("rerank_views", "top1").items() if g <= margin]
    if len(flat) > len(stats) / 2:
        return (f"reading: the reward's re-ranking of the policy's top-K on the confident views is no better than the "
                f"policy on {where(flat)}: RLCF's reward carries little signal here")
    gains = gap("rerank_views", "top1")
    best = max(gains, key=gains.get)
    return (f"reading: headroom for RLCF: the reward re-ranking the policy's top-K on its confident views gains "
            f"{np.mean(list(gains.values())):+.1f} points on average over the policy (most on {best}: "
            f"{gains[best]:+.1f}), and confident views inform (vote - clean {np.mean(list(gap('vote', 'top1').values())):+.1f})")


def table(stats: dict[str, dict]) -> str:
    """Markdown: one row per :data:`ROWS` entry, one column per set (``n`` in the header)."""
    sets = list(stats)
    head = "| measure | " + " | ".join(f"{s} (n={stats[s]['n']})" for s in sets) + " |"
    lines = [head, "|---|" + "---:|" * len(sets)]
    for key, label in ROWS:
        lines.append(f"| {label} | " + " | ".join(f"{stats[s][key]:.1f}" for s in sets) + " |")
    return "\n".join(lines) + "\n"


class DiagnoseTask:
    """Runner task: per sample, the views through the policy and the reward -> :func:`diagnose_sample`."""

    online = False

    def __init__(self, policy, reward, dataset, views, k: int, selection: float, seed: int = 0) -> None:
        self.policy, self.reward, self.dataset, self.views = policy, reward, dataset, views
        self.k, self.selection, self.seed = k, selection, seed

    @classmethod
    def from_config(cls, cfg: dict) -> "DiagnoseTask":
        device = resolve_device(cfg["run"]["device"])
        dataset = build_dataset_from_config(cfg)
        clip, _, tok = build_clip(cfg["model"], device)
        policy = build_policy(cfg["policy"], clip, dataset.classnames, tok, cfg, dataset.templates).to(device).eval()
        reward = build_reward(cfg, dataset.classnames, device, clip)
        views = build_views(cfg, clip)
        return cls(policy, reward, dataset, views, int(cfg["adapt"]["k"]), float(cfg["adapt"]["selection"]),
                   seed=cfg["run"]["seed"])

    def strata(self) -> list[int]:
        """The class of every sample: ``run.limit`` takes a class-stratified subset, as a classification run does."""
        return [int(y) for _, y in self.dataset.items]

    def __len__(self) -> int:
        return len(self.dataset)

    def sample_id(self, i: int) -> str:
        return self.dataset.sample_id(i)

    def load(self, i: int) -> tuple[Tensor, int]:
        """The views a run of the same config sees (seeded by the sample index) and the label."""
        return self.views(self.dataset.load(i), seed=self.seed * 1_000_003 + i), int(self.dataset.items[i][1])

    @torch.no_grad()
    def process(self, i: int, sample: tuple[Tensor, int]) -> dict:
        views, label = sample
        device = next(self.policy.parameters()).device
        views = views.to(device)
        p = self.policy.all_logits(Episode(views))
        t = self.reward.teacher_logits(views)
        return diagnose_sample(p, t, label, self.k, self.selection)

    def summarize(self, records: list[dict]) -> dict:
        return summarize(records)


def units(cfg: dict) -> list[cli.Unit]:
    """One unit per set of ``data.set_id``; the record fingerprint ignores the method and its learning settings."""
    out = []
    for set_id in split_set_ids(cfg["data"]["set_id"]):
        one = for_set(cfg, set_id)
        one = {**one, "method": "diagnose",
               "adapt": {"k": one["adapt"]["k"], "selection": one["adapt"]["selection"]}}
        out.append(cli.Unit(set_id, one, Path(cfg["run"]["out_dir"]) / set_id.replace("/", "_"), {"set_id": set_id}))
    return out


def finish(cfg: dict, results: dict[str, dict]) -> None:
    stats = {name: r["metrics"] for name, r in results.items()}
    out = Path(cfg["run"]["out_dir"])
    text = table(stats) + "\n" + reading(stats) + "\n"
    (out / "diagnose.md").write_text(text)
    (out / "diagnose.json").write_text(json.dumps(stats, indent=2))
    k, sel = cfg["adapt"]["k"], cfg["adapt"]["selection"]
    print(f"\nHeadroom before adaptation (K = {k}, confident views = the {100 * sel:g} % most confident):\n\n{text}\n"
          f"diagnosis: {out / 'diagnose.md'}, diagnose.json (records per set under {out}/<set>)")


def main(argv: Sequence[str] | None = None) -> dict:
    return cli.main(argv, description=__doc__, defaults=DEFAULTS, units=units, build=lambda u: DiagnoseTask.from_config(u.cfg),
                    report=lambda u, s: f"diagnose {u.name}: policy {s['metrics']['top1']:.1f}, teacher "
                                        f"{s['metrics']['teacher']:.1f}", finish=finish,
                    desc=lambda u: f"diagnose {u.name}", preflight=preflight, meanings=meanings())


if __name__ == "__main__":
    main()
