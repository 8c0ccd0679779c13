"""The main job end to end (placeholder mode: tiny random-weight CLIPs on the world's images)."""
import json

import pytest

from tasks import demo


def test_demo_placeholder_runs_end_to_end_and_reports_every_row(tmp_path, monkeypatch):
    monkeypatch.setenv("DATA_ROOT", str(tmp_path / "data"))
    results = demo.main(["--placeholder", "--limit", "3", "--out", str(tmp_path / "out")])
    saved = json.loads((tmp_path / "out" / "placeholder" / "results.json").read_text())
    assert saved["placeholder"] is True and "RANDOM-WEIGHT" in saved["note"]
    assert list(saved["rows"]) == [label for label, _ in demo.ROWS]
    for row in saved["rows"].values():
        assert set(row) == set(saved["splits"]) | {"ood_avg"}
        assert all(row[s]["n"] == 3 for s in saved["splits"])
        assert 0.0 <= row["ood_avg"]["top1"] <= 100.0
    first, *others = saved["rows"].values()
    assert "gain" not in first["ood_avg"]
    for row in others:   # paired gain over zero-shot: a difference of the two rows' means, its CI around it
        lo, hi = row["ood_avg"]["gain_ci95"]
        assert row["ood_avg"]["gain"] == pytest.approx(row["ood_avg"]["top1"] - first["ood_avg"]["top1"])
        assert lo <= row["ood_avg"]["gain"] + 1e-9 and row["ood_avg"]["gain"] - 1e-9 <= hi
    assert (tmp_path / "out" / "placeholder" / "results.png").stat().st_size > 1000
    assert "PLACEHOLDER" in (tmp_path / "out" / "placeholder" / "results.md").read_text()
    assert results["rows"].keys() == saved["rows"].keys()


@pytest.mark.slow
def test_demo_under_two_torchrun_ranks_equals_one_process(tmp_path, monkeypatch):
    """scripts/demo.sh's default on 2 cores: the ranks share the samples; every record equals a 1-process run's."""
    import os
    import subprocess
    import sys
    from pathlib import Path

    from tasks.common.runner import read_records

    root = Path(__file__).resolve().parents[1]
    env = dict(os.environ, PYTHONPATH=str(root), OMP_NUM_THREADS="1", DATA_ROOT=str(tmp_path / "data"))
    args = ["--placeholder", "--limit", "3", "--out"]
    r = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
                        "-m", "tasks.demo", *args, str(tmp_path / "two")], env=env, capture_output=True, text=True,
                       timeout=600, cwd=root)
    assert r.returncode == 0, r.stderr[-3000:]
    monkeypatch.setenv("DATA_ROOT", env["DATA_ROOT"])
    one = demo.main([*args, str(tmp_path / "one")])
    two = json.loads((tmp_path / "two" / "placeholder" / "results.json").read_text())
    assert two["rows"] == json.loads(json.dumps(one["rows"]))
    cell = Path("placeholder") / "rlcf-tune" / "sketch"
    assert sorted(p.name for p in (tmp_path / "two" / cell).glob("records-*.jsonl")) == ["records-0.jsonl",
                                                                                         "records-1.jsonl"]
    a, b = read_records(tmp_path / "one" / cell), read_records(tmp_path / "two" / cell)
    assert a.keys() == b.keys() and all(a[i]["top5"] == b[i]["top5"] and a[i]["losses"] == b[i]["losses"] for i in a)


def test_paired_gain_sees_a_small_consistent_gain_the_unpaired_intervals_hide():
    rng = __import__("numpy").random.default_rng(0)
    splits = ["a", "b"]
    base, better = {}, {}
    for s in splits:
        labels = rng.integers(0, 5, 200)
        pred = [int(y) if rng.random() < 0.5 else int((y + 1) % 5) for y in labels]
        fixed = [int(y) if k % 20 == 0 else p for k, (p, y) in enumerate(zip(pred, labels))]   # ~2.5 % more right
        base[s] = [{"index": k, "label": int(y), "pred": p} for k, (p, y) in enumerate(zip(pred, labels))]
        better[s] = [{"index": k, "label": int(y), "pred": p} for k, (p, y) in enumerate(zip(fixed, labels))]
    b = demo.ood_average(base, splits)
    g = demo.ood_average(better, splits, baseline=base)
    assert g["gain"] == pytest.approx(g["top1"] - b["top1"]) and g["gain"] > 0
    assert g["gain_ci95"][0] > 0                 # never worse on any sample: the paired CI is clear of zero
    assert g["ci95"][0] < b["ci95"][1]           # while the two unpaired intervals overlap
    assert demo.ood_average(base, splits, baseline=base)["gain_ci95"] == [0.0, 0.0]
    with pytest.raises(ValueError, match="different samples"):
        demo.ood_average(better, splits, baseline={s: base[s][::-1] for s in splits})


@pytest.mark.parametrize("torchrun_rc, calls, rc", [(0, 1, 0), (1, 2, 0), (2, 1, 2), (130, 1, 130)])
def test_demo_sh_launches_torchrun_and_falls_back_to_one_process_only_on_failure(tmp_path, torchrun_rc, calls, rc):
    """A stub `python` records the commands: a failed multi-process launch is finished in one process; a
    success, a usage error (2) or an interrupt (>= 128) is not retried."""
    import os
    import stat
    import subprocess
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    stub = tmp_path / "bin" / "python"
    stub.parent.mkdir()
    stub.write_text('#!/usr/bin/env bash\necho "$*" >> "$STUB_LOG"\n'
                    'case "$*" in *torch.distributed.run*) exit "$STUB_RC";; *) exit 0;; esac\n')
    stub.chmod(stub.stat().st_mode | stat.S_IEXEC)
    log = tmp_path / "calls.log"
    env = dict(os.environ, PATH=f"{stub.parent}:{os.environ['PATH']}", STUB_LOG=str(log), STUB_RC=str(torchrun_rc),
               RLCF_NPROC="2")
    r = subprocess.run(["bash", str(root / "scripts" / "demo.sh"), "--placeholder"], env=env, capture_output=True,
                       text=True, timeout=60)
    lines = log.read_text().splitlines()
    assert r.returncode == rc and len(lines) == calls, (r.returncode, lines, r.stderr)
    assert lines[0].startswith("-m torch.distributed.run --standalone --nproc_per_node=2 -m tasks.demo --placeholder")
    if calls == 2:
        assert lines[1] == "-m tasks.demo --placeholder" and "finishing in one process" in r.stderr
    single = subprocess.run(["bash", str(root / "scripts" / "demo.sh")], env=dict(env, RLCF_NPROC="1"),
                            capture_output=True, text=True, timeout=60)
    assert single.returncode == 0 and log.read_text().splitlines()[-1] == "-m tasks.demo"
