"""The pipeline killed (SIGKILL, whole process group) during ingest, during context and after
merge wrote its shards but before its completion marker; each rerun redoes what has no marker,
and the final shards hold every input record exactly once."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import pytest
from conftest import REPO, sample_subset

from biocap_ray.config import load_config
from biocap_ray.data import readers
from biocap_ray.pipeline import MARKER

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("ray_local")]


def _pipeline(out: Path, data: Path, context: Path, kill_at: str | None = None):
    args = ["pipeline", "--input", str(data), "--output", str(out),
            "--set", "caption.engine=transformers", "--set", "caption.sampling.max_tokens=8",
            "--set", "data.samples_per_shard=4", "--set", "context.rows_per_file=1",
            "--set", f"pipeline.context_source={context}", "--set", "train.epochs=1",
            "--set", "train.batch_size=4", "--set", "evaluate.templates=photo"]
    cmd = [sys.executable, "tests/kill_at.py", kill_at, *args] if kill_at else [sys.executable, "-m", "biocap_ray.cli", *args]
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    return subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            start_new_session=True)


def _uids(folder: Path) -> Counter:
    return Counter(r["uid"] for r in readers.read_records(str(folder), load_config("local").data, "webdataset")
                   .select_columns(["uid"]).take_all())


def test_killed_during_ingest_context_and_merge_the_reruns_hold_every_record_once(tmp_path):
    data = sample_subset(tmp_path / "data", 24)
    context = REPO / "sample_data" / "context" / "wikipedia_species_descriptions.jsonl"
    expected = Counter(Path(p).stem for p in (data / "images").iterdir())
    out = tmp_path / "out"

    # 1. ingest: killed once some shards are written
    proc = _pipeline(out, data, context)
    deadline = time.time() + 180
    while time.time() < deadline and len(list((out / "shards").glob("*.tar"))) < 2 and proc.poll() is None:
        time.sleep(0.05)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    assert list((out / "shards").glob("*.tar")) and not (out / "shards" / MARKER).exists()

    # 2. context: killed with one of its parts written; ingest is redone whole first
    proc = _pipeline(out, data, context, kill_at="context-part")
    log = proc.communicate(timeout=300)[0]
    assert proc.returncode == -signal.SIGKILL, log[-3000:]
    assert (out / "shards" / MARKER).exists() and not (out / "context" / MARKER).exists()
    assert len(list((out / "context").glob("part-*.parquet"))) == 1
    assert _uids(out / "shards") == expected  # the rewritten shards: no duplicate from the first run

    # 3. merge: killed after its shards, before its marker
    proc = _pipeline(out, data, context, kill_at="merge-written")
    log = proc.communicate(timeout=400)[0]
    assert proc.returncode == -signal.SIGKILL, log[-3000:]
    assert (out / "captions" / MARKER).exists() and not (out / "captioned" / MARKER).exists()
    assert list((out / "captioned").glob("*.tar"))

    # 4. the rerun merges again and finishes the pipeline
    proc = _pipeline(out, data, context)
    log = proc.communicate(timeout=600)[0]
    assert proc.returncode == 0, log[-4000:]
    assert log.count("finished before") == 3, log[-4000:]  # ingest, context, caption
    assert _uids(out / "shards") == _uids(out / "captioned") == expected
    records = readers.read_records(str(out / "captioned"), load_config("local").data, "webdataset").take_all()
    assert all(r["caption"] for r in records)  # the rerun's merge attached every caption
