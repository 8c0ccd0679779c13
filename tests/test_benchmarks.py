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
    n = len(bench_methods.method_rows())
    assert n >= len(rlcf.list_methods()) and [r["classes"] for r in rows] == [12] * n + [5] * n
    assert all(r["s_per_sample"] > 0 and r["precision"] == "fp32" for r in rows)
    assert (tmp_path / "m.json").is_file()


def test_bench_methods_profile_splits_a_batched_call_into_phases(capsys):
    sys.path.insert(0, str(ROOT / "benchmarks"))
    import bench_methods

    rows = bench_methods.main(["--samples", "1", "--views", "8", "--classes", "5", "--threads", "1",
                               "--methods", "rlcf", "--batch", "1,2", "--profile"])
    profiled = [r for r in rows if "phases" in r]
    assert [(r["policy"], r["batch"]) for r in profiled] == [("prompt", 2), ("encoder", 2)]
    for r in profiled:
        ph = r["phases"]
        assert set(ph) == set(bench_methods.PHASES) | {"other (Python, glue)"}
        for phase in ("rlcf/workspace reset", "rlcf/losses (per sample)", "rlcf/reward", "rlcf/backward",
                      "rlcf/optimizer", "rlcf/predict"):
            assert ph[phase] > 0, (r["policy"], phase)
        assert ph["rlcf/reward"] <= ph["rlcf/losses (per sample)"]   # nested phases are inside the losses
    assert profiled[0]["phases"]["rlcf/policy (text tower)"] > 0           # prompt tuning: the text pass
    assert profiled[1]["phases"]["rlcf/policy (image tower)"] > 0          # encoder tuning: the image tower
    assert "| losses (per sample) |" in capsys.readouterr().out


def test_bench_caption_profile_splits_an_episode_into_beam_search_and_gradient_step(capsys):
    sys.path.insert(0, str(ROOT / "benchmarks"))
    import bench_caption

    ph = bench_caption.main(["--images", "1", "--k", "3", "--steps", "2", "--amp", "fp32", "--profile"])["phases"]
    assert set(ph) == set(bench_caption.PHASES) | {"other (Python, glue)"}
    for phase in ("rlcf/policy (generate candidates)", "rlcf/policy (caption log-probs)", "rlcf/reward",
                  "rlcf/backward", "rlcf/optimizer", "rlcf/predict"):
        assert ph[phase] > 0, phase
    nested = ph["rlcf/policy (generate candidates)"] + ph["rlcf/policy (caption log-probs)"] + ph["rlcf/reward"]
    assert nested <= ph["rlcf/losses (per sample)"]
    assert "| policy (generate candidates) |" in capsys.readouterr().out
