"""The benchmark entry points run (no timing asserted: speed lives in the benchmarks' own tables)."""
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_gpu_check_without_cuda_says_so_and_exits_0():
    r = subprocess.run(["bash", str(ROOT / "benchmarks" / "gpu_check.sh")], capture_output=True, text=True,
                       timeout=120, env={"PATH": "/usr/bin:/bin", "PYTHON": sys.executable, "CUDA_VISIBLE_DEVICES": ""})
    assert r.returncode == 0, r.stderr
    assert "no CUDA GPU" in r.stdout


def test_bench_methods_rows_cover_every_method(tmp_path):
    sys.path.insert(0, str(ROOT / "benchmarks"))
    import bench_methods

    rows = bench_methods.main(["--samples", "1", "--views", "8", "--classes", "12,5", "--threads", "1",
                               "--json", str(tmp_path / "m.json")])
    import rlcf

    assert {r["method"] for r in rows} == set(rlcf.list_methods())
    assert [r["classes"] for r in rows] == [12] * 8 + [5] * 8
    assert all(r["s_per_sample"] > 0 and r["precision"] == "fp32" for r in rows)
    assert (tmp_path / "m.json").is_file()


def _phase_rows(out: str) -> dict[str, float]:
    rows = {}
    for line in out.split("profile of one", 1)[1].splitlines():
        cells = [c.strip() for c in line.strip("|").split("|")]
        if len(cells) == 3 and cells[1].replace(".", "", 1).isdigit():
            rows[cells[0]] = float(cells[1])
    return rows


def test_bench_methods_profile_splits_a_batched_call_into_phases(capsys):
    sys.path.insert(0, str(ROOT / "benchmarks"))
    import bench_methods

    bench_methods.main(["--samples", "1", "--views", "8", "--classes", "5", "--threads", "1", "--methods", "rlcf",
                        "--batch", "1,2", "--profile"])
    rows = _phase_rows(capsys.readouterr().out)
    assert set(rows) == {p.removeprefix("rlcf/") for p in bench_methods.PHASES} | {"other (Python, glue)"}
    for phase in ("losses (per sample)", "reward", "backward", "optimizer", "predict"):
        assert rows[phase] > 0, phase
    assert rows["reward"] <= rows["losses (per sample)"]   # nested phases are inside the losses


def test_bench_caption_profile_splits_an_episode_into_beam_search_and_gradient_step(capsys):
    sys.path.insert(0, str(ROOT / "benchmarks"))
    import bench_caption

    row = bench_caption.main(["--images", "1", "--k", "3", "--steps", "2", "--amp", "fp32", "--profile"])
    rows = _phase_rows(capsys.readouterr().out)
    for phase in ("policy (generate candidates)", "policy (caption log-probs)", "reward", "backward", "optimizer",
                  "predict"):
        assert rows[phase] > 0, phase
    nested = rows["policy (generate candidates)"] + rows["policy (caption log-probs)"] + rows["reward"]
    assert nested <= rows["losses (per sample)"] + 1e-3
    assert set(row["phases"]) == set(bench_caption.PHASES) | {"other (Python, glue)"}
