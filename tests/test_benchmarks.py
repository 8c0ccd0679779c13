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
