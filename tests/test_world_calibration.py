"""The world's calibration report: its targets read by hand off a made-up table, and its measurements on a tiny
world against the diagnose functions."""
from __future__ import annotations

import pytest

from tasks.world.calibration import report, target_checks


def _row(policy, teacher, top1, topk, vote):
    headroom = {"n": 100, "top1": top1, "teacher": teacher, "topk": topk, "rerank": top1, "rerank_views": top1,
                "vote": vote, "teacher_views": teacher, "ece": 5.0}
    return {"policy": policy, "teacher": teacher, "headroom": headroom}


# val 66 / teacher 76; OOD policy 64, 50, 42, 40 (avg 49, 74 % of val), teacher 74, 66, 58, 54 (avg 63, +14)
GOOD = {"val": _row(66, 76, 66, 85, 68), "v2": _row(64, 74, 64, 82, 66), "sketch": _row(50, 66, 50, 67, 51),
        "rendition": _row(42, 58, 42, 58, 42), "adversarial": _row(40, 54, 40, 57, 43)}


def test_every_target_met_on_a_table_built_to_meet_them():
    checks = target_checks(GOOD)
    assert [ok for _, ok, _ in checks] == [True] * 8
    values = {what: value for what, _, value in checks}
    assert values["teacher >= policy + 12 on the OOD average"] == "+14.0"
    assert values["policy OOD average >= 60 % of its val"] == "74 %"
    assert values["no OOD split below 35 % of val"] == "adversarial 61 %"
    assert values["top-3 recall >= top-1 + 15 on every OOD split"] == "rendition +16.0"
    assert values["confident-view vote >= clean top-1 on every split"] == "rendition +0.0"


@pytest.mark.parametrize("split, change, target", [
    ("val", {"policy": 58}, "policy clean val in [60, 80] %"),
    ("val", {"teacher": 70}, "teacher >= policy + 6 on clean val"),
    ("rendition", {"teacher": 20}, "teacher >= policy + 12 on the OOD average"),
    ("sketch", {"policy": 22}, "no OOD split below 35 % of val"),
    ("v2", {"headroom": dict(GOOD["v2"]["headroom"], topk=70)}, "top-3 recall >= top-1 + 15 on every OOD split"),
    ("rendition", {"headroom": dict(GOOD["rendition"]["headroom"], vote=41)},
     "confident-view vote >= clean top-1 on every split"),
])
def test_each_target_fails_alone(split, change, target):
    table = {s: dict(r) for s, r in GOOD.items()}
    table[split].update(change)
    failed = [what for what, ok, _ in target_checks(table) if not ok]
    assert failed == [target]


def test_the_ood_ratio_target():
    table = {s: dict(r) for s, r in GOOD.items()}
    table["val"] = _row(80, 88, 80, 90, 80)
    table["v2"] = _row(50, 74, 50, 80, 62)           # OOD average 45.5 = 57 % of 80
    failed = [what for what, ok, _ in target_checks(table) if not ok]
    assert failed == ["policy OOD average >= 60 % of its val"]


def test_report_prints_the_table_and_every_target():
    text = report(GOOD)
    assert text.splitlines()[0] == "| measure | val | v2 | sketch | rendition | adversarial |"
    assert text.count("target: ") == 8 and "NO" not in text
