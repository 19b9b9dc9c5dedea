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
    assert result["removed_after_step"] < 8, "the node went away after the last step: nothing was tested"
    assert result["restarts"] == 1 and result["restored_from_step"] >= result["removed_after_step"] >= 2
    assert result["steps"] == 8  # the planned step count
    assert sorted(set(result["loss_steps"])) == list(range(1, 9))  # no step missing in MLflow


def test_a_caption_pool_grows_onto_a_joining_node_and_outlives_losing_one(tmp_path):
    from biocap_ray.caption import outputs

    src = sample_subset(tmp_path / "data", 96)
    dst = tmp_path / "captions"
    result = run("caption-node-lost", str(src), str(dst))
    story = (f"events {result['events']}; at the removal {result['at_removal']}; "
             f"(s, parts, engines placed) every 2 s: {result['timeline']}")
    assert [name for name, _ in result["events"]] == [
        "caption-b added", "caption-a removed", "caption-c added", "finished"], story
    # the node went away while both engines worked: the range's low end on one node had grown to
    # its high end once a second node joined
    assert result["at_removal"]["engines"] == 2, story
    assert 0 < result["at_removal"]["parts"] < 96 // 4, f"the node went away outside the run: {story}"
    rows = outputs.read_parts(str(dst), ["uid", "error"]).to_pylist()
    assert sorted(r["uid"] for r in rows) == sorted(p.stem for p in (src / "images").glob("*.jpg"))  # each once
    assert result["errors"] == 0 and not any(r["error"] for r in rows)  # the loss made no error rows
    # the batch the lost engine held was handed to an engine again; the lost actor restarted
    # on the replacement node
    assert result["rows_retried"] > 0 and result["engine_starts"] >= 3, story
