"""The main job end to end (placeholder mode: tiny random-weight CLIPs on the world's images)."""
import json

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
    assert (tmp_path / "out" / "placeholder" / "results.png").stat().st_size > 1000
    assert "PLACEHOLDER" in (tmp_path / "out" / "placeholder" / "results.md").read_text()
    assert results["rows"].keys() == saved["rows"].keys()
