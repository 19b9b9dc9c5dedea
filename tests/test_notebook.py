"""The sweep notebook runs top to bottom (its own local Ray) and leaves its results behind.

It runs here with a learning rate grid of a good and a hopeless value, so the same real sweep
also shows ASHA stopping the hopeless trial at its first report, and how trials nest in MLflow."""

from __future__ import annotations

import csv
import json

import mlflow
import pytest
from conftest import REPO, sample_subset


@pytest.mark.slow
def test_the_sweep_notebook_executes_and_asha_stops_a_hopeless_trial(tmp_path, monkeypatch):
    import nbformat
    from nbclient import NotebookClient

    data = sample_subset(tmp_path / "data", 16)
    out = tmp_path / "sweep"
    monkeypatch.setenv("BIOCAP_SWEEP_DATA", str(data))
    monkeypatch.setenv("BIOCAP_SWEEP_OUT", str(out))
    monkeypatch.setenv("BIOCAP_SWEEP_OVERRIDES", json.dumps([
        "train.batch_size=8", "data.batch_size=8", "train.epochs=20", "train.checkpoint_every=10",
        f"train.val_data={data}",
        # the first trial learns; the second barely moves, so ASHA stops it at its first report
        "tune.space={train.lr: {grid: [0.002, 1.0e-9]}, train.caption_weight: {grid: [0.3]}}",
        "tune.max_concurrent_trials=1",
    ]))
    monkeypatch.delenv("BIOCAP_CLUSTER_ADDRESS", raising=False)
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)  # exported by other tests' set_tracking_uri
    nb = nbformat.read(REPO / "notebooks" / "sweep.ipynb", as_version=4)
    NotebookClient(nb, timeout=900, kernel_name="python3", resources={"metadata": {"path": str(REPO / "notebooks")}}).execute()

    shown = [o for c in nb.cells if c["cell_type"] == "code" for o in c["outputs"]]
    assert any("image/png" in o.get("data", {}) for o in shown)  # the plot is displayed
    assert any("text/html" in o.get("data", {}) and "caption-weight" in o["data"]["text/html"] for o in shown)
    rows = {float(r["train.lr"]): r for r in csv.DictReader(open(out / "caption-weight-results.csv"))}
    assert set(rows) == {0.002, 1e-9}
    assert rows[0.002]["status"] == "completed" and rows[1e-9]["status"] == "stopped early"
    assert (out / "caption-weight-accuracy.png").read_bytes()[:4] == b"\x89PNG"

    mlflow.set_tracking_uri(f"sqlite:///{out / 'mlflow.db'}")
    runs = mlflow.search_runs(experiment_names=["biocap-tune"], output_format="list")
    parent = [r for r in runs if r.data.tags.get("biocap_sweep") == "caption-weight"]
    assert len(parent) == 1
    children = {float(r.data.params["train.lr"]): r for r in runs
                if r.data.tags.get("mlflow.parentRunId") == parent[0].info.run_id}
    good, bad = children[0.002], children[1e-9]
    assert good.info.status == "FINISHED" and bad.info.status == "KILLED"
    client = mlflow.MlflowClient()
    good_val = client.get_metric_history(good.info.run_id, "val_top1")
    bad_val = client.get_metric_history(bad.info.run_id, "val_top1")
    assert [m.step for m in good_val] == [10, 20] and [m.step for m in bad_val] == [10]
    assert bad_val[0].value < good_val[0].value  # why ASHA stopped it at its first report
    assert len(client.get_metric_history(good.info.run_id, "loss")) == 20
    assert len(client.get_metric_history(bad.info.run_id, "loss")) < 20
    assert good.data.tags["best_checkpoint"] and rows[0.002]["mlflow_run"] == good.info.run_id
    artifacts = {a.path for a in client.list_artifacts(parent[0].info.run_id)}
    assert {"caption-weight-results.csv", "caption-weight-accuracy.png"} <= artifacts
