"""README's two fresh-machine commands and .ci/run agree: CI runs exactly the test command, then the main job."""
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _blocks() -> list[str]:
    return re.findall(r"```bash\n(.*?)```", (ROOT / "README.md").read_text(encoding="utf-8"), flags=re.S)


def test_ci_runs_the_readme_test_command_then_the_main_job():
    blocks = _blocks()
    main_job, tests = blocks[0].strip(), blocks[1].strip()
    assert main_job.startswith("pip install ") and main_job.endswith("bash scripts/demo.sh")
    ci = [line for line in (ROOT / ".ci/run").read_text().splitlines() if line and not line.startswith("#")]
    test_lines = tests.splitlines()
    at = ci.index(test_lines[0])
    assert ci[at:at + len(test_lines)] == test_lines                      # the test command, verbatim
    after = ci[at + len(test_lines):]
    assert "bash scripts/demo.sh" in after and any("check_main_job.py" in line for line in after)
    assert after.index("bash scripts/demo.sh") < next(i for i, x in enumerate(after) if "check_main_job" in x)


def test_main_job_check_catches_missing_cells_and_error_records(tmp_path):
    import json
    import subprocess
    import sys

    def check(results: dict, records: list[str]) -> subprocess.CompletedProcess:
        (tmp_path / "results.json").write_text(json.dumps(results))
        (tmp_path / "results.md").write_text("| method | val |\n")
        cell = tmp_path / "rlcf-tune" / "val"
        cell.mkdir(parents=True, exist_ok=True)
        (cell / "records-0.jsonl").write_text("\n".join(records) + "\n")
        return subprocess.run([sys.executable, str(ROOT / ".ci/check_main_job.py"), str(tmp_path)],
                              capture_output=True, text=True)

    cell = {"top1": 50.0, "n": 4, "errors": 0}
    control = {"diff": 6.0, "ci95": [2.5, 9.6], "n": 240, "changed": 8.0}
    good = {"splits": ["val"], "rows": {"RLCF": {"val": cell, "ood_avg": {"top1": 40.0}}}, "control": control}
    r = check(good, ['{"index": 0, "pred": 1}'])
    assert r.returncode == 0 and "negative control: working - broken RLCF +6.0 top-1 points" in r.stdout
    for broken, says in (({"ci95": [-0.4, 9.6]}, "cannot tell a working RLCF"), ({"n": 120}, "on 120 samples"),
                         ({"changed": 3.0}, "changed only 3.0 %")):
        r = check({**good, "control": {**control, **broken}}, ['{"index": 0, "pred": 1}'])
        assert r.returncode == 1 and says in r.stderr, r.stderr
    # with the true-class probabilities, their CI decides (every sample counts); top-1's is only reported
    prob = {"diff": 1.2, "ci95": [0.4, 2.0], "n": 240, "working": 30.0, "broken": 28.8}
    r = check({**good, "control": {**control, "ci95": [-0.4, 9.6], "prob": prob}}, ['{"index": 0, "pred": 1}'])
    assert r.returncode == 0 and "+1.20 true-class probability points (+0.40 to +2.00)" in r.stdout, r.stderr
    r = check({**good, "control": {**control, "prob": {**prob, "ci95": [-0.1, 2.0]}}}, ['{"index": 0, "pred": 1}'])
    assert r.returncode == 1 and "in true-class probability +1.20 points" in r.stderr, r.stderr
    r = check({k: v for k, v in good.items() if k != "control"}, ['{"index": 0, "pred": 1}'])
    assert r.returncode == 1 and "no negative control" in r.stderr
    missing = {"splits": ["val", "v2"], "rows": {"RLCF": {"val": cell, "ood_avg": {"top1": 40.0}}}, "control": control}
    r = check(missing, ['{"index": 0, "pred": 1}'])
    assert r.returncode == 1 and "RLCF: no value for v2" in r.stderr
    r = check(good, ['{"index": 0, "pred": 1}', '{"index": 1, "error": "boom"}'])
    assert r.returncode == 1 and "1 error records" in r.stderr


def test_readme_has_no_unfilled_placeholder():
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    assert not re.findall(r"__[A-Z][A-Z_]*__", text), "README.md has an unfilled __PLACEHOLDER__"
