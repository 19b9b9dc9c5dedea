"""The ``biocap-ray`` command as users run it: help, argument errors, the pipeline job."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from biocap_ray.cli import build_parser, main
from conftest import REPO

ENV = {**os.environ, "PYTHONPATH": str(REPO)}


def _run(*args, timeout=600):
    return subprocess.run([sys.executable, *args], cwd=REPO, env=ENV, capture_output=True, text=True,
                          timeout=timeout)


@pytest.mark.parametrize("argv", [["--help"], ["data", "--help"], ["data", "convert", "--help"],
                                  ["data", "inspect", "--help"], ["evaluate", "--help"], ["tune", "--help"],
                                  ["pipeline", "--help"]])
def test_every_command_has_help(argv, capsys):
    with pytest.raises(SystemExit) as exc:
        build_parser().parse_args(argv)
    assert exc.value.code == 0
    assert "usage: biocap-ray" in capsys.readouterr().out


def test_unknown_flags_are_errors(capsys):
    with pytest.raises(SystemExit) as exc:
        main(["data", "inspect", "x", "--no-such-flag"])
    assert exc.value.code == 2
    assert "unrecognized arguments: --no-such-flag" in capsys.readouterr().err


def test_bad_config_field_fails_fast_naming_it(capsys):
    assert main(["data", "inspect", "x", "--set", "data.batch_size=-3"]) == 2
    assert "data.batch_size" in capsys.readouterr().err


def test_missing_input_is_a_clear_error(tmp_path, capsys):
    assert main(["data", "inspect", str(tmp_path / "nothing-here")]) == 2
    assert "nothing-here: not found" in capsys.readouterr().err


def test_pipeline_job_runs_end_to_end_and_resumes(tmp_path):
    out = tmp_path / "run"
    first = _run("jobs/pipeline.py", "--output", str(out))
    assert first.returncode == 0, first.stderr[-3000:]
    summary = json.loads(first.stdout.strip().splitlines()[-1])
    assert summary["records"] == 97 and summary["ingest_errors"] == 0 and summary["classes"] == 14
    assert summary["captions_written"] == 97 and summary["caption_errors"] == 0
    assert summary["train_steps"] > 0 and summary["train_loss"] > 0
    assert Path(summary["model_export"], "open_clip_label.safetensors").exists()
    assert 0 <= summary["zero_shot_top1"] <= summary["zero_shot_top5"] <= 1
    assert "## Comparison" in Path(summary["report"]).read_text()
    import mlflow

    mlflow.set_tracking_uri(summary["mlflow_tracking_uri"])
    stages = {r.data.tags.get("stage") for r in mlflow.search_runs(search_all_experiments=True, output_format="list")}
    assert {"train", "evaluate"} <= stages
    assert "ranks present    kingdom=97" in first.stdout
    shards = sorted(p.name for p in (out / "shards").glob("*.tar"))
    assert shards
    again = _run("jobs/pipeline.py", "--output", str(out))
    assert again.returncode == 0 and "exists, skipping" in again.stderr
    assert sorted(p.name for p in (out / "shards").glob("*.tar")) == shards
