"""CI's check of the main job's output (run after `bash scripts/demo.sh`): the table exists, every method row has
a value for every split, and no sample ended in an error record.

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
for p in problems:
    print(f"main job check: {p}", file=sys.stderr)
n = sum(row["val"]["n"] for row in rows.values()) if rows else 0
print(f"main job check: {'FAILED' if problems else 'ok'}: {len(rows)} rows x {len(results.get('splits', []))} splits"
      f" ({n} val samples over the rows), no error records" if not problems else "main job check: FAILED")
sys.exit(1 if problems else 0)
