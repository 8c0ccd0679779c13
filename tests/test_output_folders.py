"""Records and folders that never lie (issue 25, items 2-4): a changed setting on an existing output folder is refused
in one line before any model loads, with the folder byte-identical; ``run.restart=true`` moves the old records aside,
never deleting them; error records are retried on a rerun and a run with errors exits 3; records say per component
what precision ran; the LM of caption configs runs float32 on CPU; ``run.limit`` covers every class; caption TTA
prints its table; a missing package is named before any model loads."""
from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest
import torch

from tasks.command import main as rlcf_main
from tasks.common.runner import read_records, run
from test_caption_tta import _tiny_cli_run

REPO = Path(__file__).resolve().parents[1]
PAPER = ["--config", str(REPO / "configs/captioning/clipcap-c2f.yaml")]


def _snapshot(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.fixture
def caption_run(tmp_path):
    """The overrides of a tiny caption TTA run on the paper config (tiny CLIPs and captioner, 2 images)."""
    return ["run", "captioning", *PAPER, *_tiny_cli_run(tmp_path), "eval.tokenizer=simple",
            f"run.out_dir={tmp_path / 'out'}"]


def test_a_changed_setting_is_refused_in_one_line_and_the_folder_stays_byte_identical(tmp_path, caption_run, capsys,
                                                                                      monkeypatch):
    out = tmp_path / "out"
    assert rlcf_main(caption_run) == 0
    before = _snapshot(out)
    assert {"config.yaml", "fingerprint.json", "records-0.jsonl", "summary.json"} <= set(before)
    import tasks.captioning.task as task

    real = task.CaptionTask.from_config
    monkeypatch.setattr(task.CaptionTask, "from_config", classmethod(lambda cls, cfg: pytest.fail("models loaded")))
    capsys.readouterr()
    rc = rlcf_main([*caption_run, "captioner.lm_dtype=float16"])
    err = capsys.readouterr().err
    assert rc == 2 and err.count("\n") == 1, err
    assert "differs in: captioner.lm_dtype" in err and "run.out_dir=" in err and "run.restart=true" in err
    assert _snapshot(out) == before                                   # config.yaml, fingerprint.json, records ...
    # run.restart=true: the old records go aside (never deleted), the run starts afresh with the new setting
    monkeypatch.setattr(task.CaptionTask, "from_config", real)
    assert rlcf_main([*caption_run, "captioner.lm_dtype=float16", "run.restart=true"]) == 0
    old = [p for p in out.iterdir() if p.is_dir() and p.name.startswith("old-")]
    assert len(old) == 1 and _snapshot(old[0]) == {k: v for k, v in before.items() if "/" not in k}
    recs = read_records(out)
    assert len(recs) == 2 and {r["precisions"]["lm"] for r in recs.values()} == {"fp16"}   # it says what ran
    assert json.loads((out / "fingerprint.json").read_text())["captioner"]["lm_dtype"] == "float16"


def test_caption_configs_run_the_lm_in_float32_on_cpu_and_records_say_so(tmp_path, caption_run, monkeypatch):
    from tasks.captioning import checkpoint

    dtypes = []
    real = checkpoint.load_captioner

    def spy(path, lm_path=None, device="cpu", lm_dtype=torch.float32, config=None):
        dtypes.append(lm_dtype)
        return real(path, lm_path, device, lm_dtype, config)

    import tasks.captioning.task as task

    monkeypatch.setattr(task, "load_captioner", spy)
    assert rlcf_main(caption_run) == 0                     # the paper config says lm_dtype: auto
    assert dtypes == [torch.float32]
    recs = read_records(tmp_path / "out")
    assert all(r["precision"] == "fp32" and r["precisions"] == {"policy": "fp32", "lm": "fp32", "reward": "fp32"}
               for r in recs.values())


def test_dtype_options_follow_the_amp_rule_and_an_explicit_value_wins(caplog):
    from tasks.common.config import ConfigValueError
    from tasks.common.logs import reset_once
    from tasks.common.precision import module_precision, resolve_dtype

    assert resolve_dtype("auto", "cuda") == torch.float16                  # the official OPT setting
    assert resolve_dtype("auto", "cpu") == torch.float32
    assert resolve_dtype(None, "cpu") == torch.float32
    assert resolve_dtype("auto", "cuda", amp=None) == torch.float32       # adapt.amp=null: fp32 everywhere
    assert resolve_dtype("auto", "cuda", amp="bf16") == torch.bfloat16
    assert resolve_dtype("float32", "cuda") == torch.float32              # explicit values win
    reset_once()
    with caplog.at_level(logging.WARNING, logger="tasks"):
        assert resolve_dtype("float16", "cpu", key="captioner.lm_dtype") == torch.float16
    assert "captioner.lm_dtype=float16 on CPU" in caplog.text and "auto picks float32" in caplog.text
    with pytest.raises(ConfigValueError, match="vlrm.itm.dtype"):
        resolve_dtype("half", "cpu", key="vlrm.itm.dtype")
    lin = torch.nn.Linear(2, 2)
    assert module_precision(lin, "fp32") == "fp32" and module_precision(lin, "fp16") == "fp16"
    assert module_precision(lin.half(), "fp32") == "fp16"


def test_a_restored_image_is_retried_and_errors_set_the_exit_code(tmp_path, caption_run, caplog):
    """An image missing beyond the pre-flight's look is an error record; the last line counts the errors and the exit
    code is 3; restored, the rerun tries it again (``run.keep_errors=true`` keeps the record)."""
    image = tmp_path / "images" / "1.jpg"
    keep = image.read_bytes()
    image.unlink()
    with caplog.at_level(logging.INFO, logger="tasks"):
        assert rlcf_main(caption_run) == 3
    assert "1 of 2 samples failed" in caplog.records[-1].getMessage()      # the final line counts them
    recs = read_records(tmp_path / "out")
    assert "error" in recs[1] and "error" not in recs[0]
    lines = (tmp_path / "out" / "records-0.jsonl").read_text().splitlines()
    assert rlcf_main([*caption_run, "run.allow_errors=true"]) == 0          # still missing: the same error, kept
    assert (tmp_path / "out" / "records-0.jsonl").read_text().splitlines() == lines
    image.write_bytes(keep)
    assert rlcf_main([*caption_run, "run.keep_errors=true"]) == 3          # kept as they are
    assert "error" in read_records(tmp_path / "out")[1]
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="tasks"):
        assert rlcf_main(caption_run) == 0                                 # retried by default
    assert "1 error records tried again" in caplog.text
    recs = read_records(tmp_path / "out")
    assert "error" not in recs[1] and isinstance(recs[1]["caption"], str) and "error" not in recs[0]
    summary = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert summary["n"] == 2 and summary["errors"] == 0


def test_caption_tta_prints_its_table_and_where_it_went(tmp_path, caption_run, capsys):
    assert rlcf_main([*caption_run, "eval.spice=false"]) == 0
    out = capsys.readouterr().out
    rows = {ln.split("|")[1].strip(): ln for ln in out.splitlines() if ln.startswith("| ")}
    for key in ("BLEU-1", "BLEU-2", "BLEU-3", "BLEU-4", "ROUGE-L", "CIDEr", "CLIPScore", "RefCLIPScore"):
        zs, adapted = rows[key].split("|")[2:4]
        assert float(zs) >= 0 and float(adapted) >= 0, rows[key]
    assert "skipped: eval.meteor=false" in rows["METEOR"] and "skipped: eval.spice=false" in rows["SPICE"]
    assert "zero-shot" in rows["metric"] and "rlcf (adapted)" in rows["metric"]
    assert f"results: {tmp_path / 'out' / 'results.md'}" in out
    assert (tmp_path / "out" / "results.md").read_text().splitlines()[0] == rows["metric"]


def test_a_missing_package_is_named_before_any_model_loads(tmp_path, caption_run, capsys, monkeypatch):
    import importlib.util

    import tasks.captioning.task as task

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "pycocoevalcap" else real(name, *a))
    monkeypatch.setattr(task.CaptionTask, "from_config", classmethod(lambda cls, cfg: pytest.fail("models loaded")))
    assert rlcf_main(caption_run) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "pycocoevalcap" in err and 'pip install -e ".[caption]"' in err
    assert not (tmp_path / "out").exists()


def test_restart_of_the_main_job_moves_records_aside_never_deleting(tmp_path):
    """``on_change="restart"`` (the main job's cells): the old records are moved into ``old-<date>/``."""
    class Count:
        online = False
        def __len__(self): return 3
        def sample_id(self, i): return str(i)
        def load(self, i): return i
        def process(self, i, sample): return {"value": sample}
        def summarize(self, records): return {"n": len(records)}

    run(Count(), tmp_path, fingerprint={"adapt": {"lr": 1.0}})
    before = _snapshot(tmp_path)
    run(Count(), tmp_path, fingerprint={"adapt": {"lr": 2.0}}, on_change="restart")
    old = [p for p in tmp_path.iterdir() if p.is_dir()]
    assert len(old) == 1 and old[0].name.startswith("old-") and _snapshot(old[0]) == before
    assert len(read_records(tmp_path)) == 3
    from tasks.common.outdir import FolderInUseError

    with pytest.raises(FolderInUseError, match=r"differs in: adapt.lr.*run.restart=true"):
        run(Count(), tmp_path, fingerprint={"adapt": {"lr": 3.0}})


def test_run_limit_takes_every_class_and_says_so(tmp_path, caplog):
    from test_runner import cli_args, make_dtd

    from tasks.classification.run import main

    data = make_dtd(tmp_path / "data", per_class=3)                      # 3 classes, sorted by class on disk
    with caplog.at_level(logging.INFO, logger="tasks"):
        main(cli_args(data, tmp_path / "out", method="zeroshot", extra=("adapt.steps=0", "run.limit=4")))
    recs = read_records(tmp_path / "out" / "DTD")
    assert sorted(recs) == [0, 1, 3, 6] and {r["label"] for r in recs.values()} == {0, 1, 2}
    subset = json.loads((tmp_path / "out" / "DTD" / "summary.json").read_text())["subset"]
    assert subset.startswith("a class-stratified subset of 4 of 9 samples") and subset in caplog.text
    main(cli_args(data, tmp_path / "seeded", method="zeroshot", extra=("adapt.steps=0", "run.limit=4",
                                                                      "run.shuffle_seed=0")))
    assert "seeded random subset" in json.loads((tmp_path / "seeded" / "DTD" / "summary.json").read_text())["subset"]
