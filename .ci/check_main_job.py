"""CI's check of the main job's output (run after `bash scripts/demo.sh`): the table exists, every method row has
a value for every split, no sample ended in an error record, and the main job can tell a working RLCF from a broken
one: its negative control (RLCF encoder tuning with the reward negated, `tasks/demo/control.py`, on at least 160
shifted samples) is worse than the working RLCF on the same samples with a paired 95% CI clear of zero (in the
true class's probability where the records have it, else in top-1), and the working RLCF changed at least 5 % of
the shifted predictions from zero-shot.

    python .ci/check_main_job.py [output/demo]
"""
import json
import math
import sys
from pathlib import Path

out = Path(sys.argv[1] if len(sys.argv) > 1 else "output/demo")
problems = []
table = out / "results.md"
if not table.is_file() or "| method |" not in table.read_text():
    problems.append(f"no results table at {table}")
results = json.loads((out / "results.json").read_text()) if (out / "results.json").is_file() else {}
rows = results.get("rows", {})
if not rows:
    problems.append(f"no method rows in {out / 'results.json'}")
for label, row in rows.items():
    for split in results["splits"] + ["ood_avg"]:
        value = row.get(split, {}).get("top1")
        if value is None or not math.isfinite(value):
            problems.append(f"{label}: no value for {split}")
        if row.get(split, {}).get("errors"):
            problems.append(f"{label} on {split}: {row[split]['errors']} error records")
for rec_file in out.glob("*/*/records-*.jsonl"):
    errors = sum('"error"' in line for line in rec_file.read_text().splitlines())
    if errors:
        problems.append(f"{rec_file}: {errors} error records")
control = results.get("control")
if rows and not control:
    problems.append(f"no negative control in {out / 'results.json'} (bash scripts/demo.sh runs it unless --control 0)")
elif control:
    # the paired difference in the true class's probability (every sample counts), top-1's where records lack it
    measure, stat = ("true-class probability", control["prob"]) if control.get("prob") else ("top-1", control)
    lo, hi = stat["ci95"]
    if control["n"] < 160:
        problems.append(f"negative control on {control['n']} samples: at least 160 are needed")
    if lo <= 0:
        problems.append(f"the main job cannot tell a working RLCF from one with the reward negated: paired difference "
                        f"in {measure} {stat['diff']:+.2f} points, 95% CI {lo:+.2f} to {hi:+.2f} (not clear of zero)")
    if control["changed"] < 5.0:
        problems.append(f"the configured RLCF (encoder) changed only {control['changed']:.1f} % of the shifted "
                        "predictions (at least 5 % needed): it is zero-shot with extra steps")
for p in problems:
    print(f"main job check: {p}", file=sys.stderr)
n = sum(row["val"]["n"] for row in rows.values()) if rows else 0
if problems:
    print("main job check: FAILED")
else:
    print(f"main job check: ok: {len(rows)} rows x {len(results.get('splits', []))} splits ({n} val samples over the "
          f"rows), no error records; negative control: working - broken RLCF {control['diff']:+.1f} top-1 points "
          f"({control['ci95'][0]:+.1f} to {control['ci95'][1]:+.1f}, n {control['n']})"
          + (f", {control['prob']['diff']:+.2f} true-class probability points ({control['prob']['ci95'][0]:+.2f} to "
             f"{control['prob']['ci95'][1]:+.2f})" if control.get("prob") else "")
          + f"; the working RLCF changed {control['changed']:.1f} % of shifted predictions")
sys.exit(1 if problems else 0)
