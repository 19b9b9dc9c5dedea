"""Whole nodes lost mid-run, on a local multi-node Ray (see tests/multinode.py): what a spot
reclaim does to a stage, short of a cloud."""

from __future__ import annotations

import tarfile

import pytest

from conftest import sample_subset
from multinode import run

pytestmark = pytest.mark.slow


def test_ingest_finishes_with_every_record_once_when_a_cpu_node_is_lost(tmp_path):
    src = sample_subset(tmp_path / "data", 64)
    dst = tmp_path / "shards"
    result = run("ingest-node-lost", str(src), str(dst))
    assert result["node_removed_before_the_end"], "the node went away after the ingest: nothing was tested"
    keys = [n.split(".", 1)[0] for t in sorted(dst.glob("*.tar")) for n in tarfile.open(t).getnames()
            if n.endswith(".jpg")]
    expected = sorted(p.stem for p in (src / "images").glob("*.jpg"))
    assert sorted(keys) == expected  # every record, exactly once
    assert (result["records"], result["errors"]) == (64, 0)


def test_training_resumes_from_its_last_checkpoint_when_its_node_is_replaced(tmp_path):
    src = sample_subset(tmp_path / "data", 16, captions=True)
    result = run("train-node-lost", str(src), str(tmp_path / "train"))
    assert result["events"] == ["removed", "added"]
    assert result["restarts"] == 1 and result["restored_from_step"] in (2, 4)
    assert result["steps"] == 6  # the planned step count
    assert sorted(set(result["loss_steps"])) == list(range(1, 7))  # no step missing in MLflow
