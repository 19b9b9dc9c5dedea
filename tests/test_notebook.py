"""The sweep notebook runs top to bottom (its own local Ray) and leaves its results behind."""

from __future__ import annotations

import csv

import pytest

from conftest import REPO


@pytest.mark.slow
def test_the_sweep_notebook_executes(tmp_path, monkeypatch):
    import nbformat
    from nbclient import NotebookClient

    out = tmp_path / "sweep"
    monkeypatch.setenv("BIOCAP_SWEEP_OUT", str(out))
    monkeypatch.delenv("BIOCAP_CLUSTER_ADDRESS", raising=False)
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)  # exported by other tests' set_tracking_uri
    nb = nbformat.read(REPO / "notebooks" / "sweep.ipynb", as_version=4)
    NotebookClient(nb, timeout=900, kernel_name="python3", resources={"metadata": {"path": str(REPO / "notebooks")}}).execute()

    rows = list(csv.DictReader(open(out / "caption-weight-results.csv")))
    assert sorted(float(r["train.caption_weight"]) for r in rows) == [0.0, 0.5]
    outputs = {c["execution_count"]: c["outputs"] for c in nb.cells if c["cell_type"] == "code"}
    shown = [o for cell in outputs.values() for o in cell]
    assert any("image/png" in o.get("data", {}) for o in shown)  # the plot is displayed
    assert any("text/html" in o.get("data", {}) and "caption-weight" in o["data"]["text/html"] for o in shown)
