"""Ray Tune sweeps of training runs: search spaces, and a real 2-trial sweep with MLflow."""

from __future__ import annotations

import mlflow
import pytest

from biocap_ray.config import ConfigError, load_config
from biocap_ray.tune.space import concurrent_trials, param_space, search_algorithm, trial_config
from conftest import sample_subset


def test_search_spaces_become_tune_domains():
    from ray.tune.search.optuna import OptunaSearch
    from ray.tune.search.sample import Categorical, Float

    cfg = load_config("local", ["tune.search=optuna",
                                "tune.space={train.caption_weight: {grid: [0, 0.5]}, train.lr: {loguniform: [1e-5, 1e-2]},"
                                " train.mode: {choice: [sample, joint]}}"])
    space = param_space(cfg.tune)
    assert isinstance(space["train.caption_weight"], Categorical) and isinstance(space["train.lr"], Float)
    assert isinstance(search_algorithm(cfg.tune, seed=0), OptunaSearch)
    grid = param_space(load_config(None).tune)  # the defaults: the caption weighting on a grid
    assert grid["train.caption_weight"] == {"grid_search": [0.0, 1 / 6, 1 / 3, 0.5]}
    with pytest.raises(ValueError, match="grid values for every axis"):
        param_space(load_config("local", ["tune.space={train.lr: {uniform: [0.1, 0.2]}}"]).tune)
    with pytest.raises(ConfigError, match="train.<field>"):
        load_config("local", ["tune.space={caption.temperature: {grid: [0.1]}}"])


def test_a_trial_config_is_validated_and_the_cluster_decides_concurrency():
    base = load_config("local")
    cfg = trial_config(base, {"train.caption_weight": 0.5, "train.mode": "joint"})
    assert (cfg.train.caption_weight, cfg.train.mode, base.train.mode) == (0.5, "joint", "sample")
    with pytest.raises(ValueError, match="caption_weight"):
        trial_config(base, {"train.caption_weight": 2.0})
    assert concurrent_trials(base, {"CPU": 2}) == 1  # 2 workers x 0.5 CPU + a driver + decode tasks
    assert concurrent_trials(base, {"CPU": 16}) == 10
    gpu = load_config("cluster")
    assert concurrent_trials(gpu, {"GPU": 16, "CPU": 200}) == 16 // gpu.train.num_workers


@pytest.mark.slow
@pytest.mark.usefixtures("ray_local")
def test_a_two_trial_sweep_nests_trials_in_mlflow_and_stops_a_bad_trial_early(tmp_path):
    from biocap_ray.tune.sweep import sweep

    data = sample_subset(tmp_path / "data", 16)
    cfg = load_config("local", [
        "train.batch_size=8", "data.batch_size=8", "train.epochs=20", "train.checkpoint_every=10",
        "train.cache_dataset=true", f"train.val_data={data}", "evaluate.templates=photo",
        # the first trial learns; the second barely moves, so ASHA stops it at its first report
        "tune.space={train.lr: {grid: [0.002, 1.0e-9]}, train.caption_weight: {grid: [0.3]}}",
        "tune.max_concurrent_trials=1",
    ])
    out = tmp_path / "out"
    result = sweep(str(data), str(out), cfg, name="s")
    assert result["trials"] == 2 and result["best_params"]["train.lr"] == 0.002

    rows = (out / "s-results.csv").read_text().splitlines()
    assert len(rows) == 3 and (out / "s-accuracy.png").read_bytes()[:4] == b"\x89PNG"
    mlflow.set_tracking_uri(result["mlflow_tracking_uri"])
    runs = mlflow.search_runs(experiment_names=["biocap-tune"], output_format="list")
    parent = [r for r in runs if r.data.tags.get("biocap_sweep") == "s"]
    children = sorted((r for r in runs if r.data.tags.get("mlflow.parentRunId") == result["mlflow_parent_run"]),
                      key=lambda r: float(r.data.params["train.lr"]), reverse=True)
    assert len(parent) == 1 and len(children) == 2
    good, bad = children
    assert good.info.status == "FINISHED" and bad.info.status == "KILLED"
    client = mlflow.MlflowClient()
    good_val = client.get_metric_history(good.info.run_id, "val_top1")
    bad_val = client.get_metric_history(bad.info.run_id, "val_top1")
    assert [m.step for m in good_val] == [10, 20] and [m.step for m in bad_val] == [10]
    assert bad_val[0].value < good_val[0].value  # why ASHA stopped it at its first report
    assert len(client.get_metric_history(good.info.run_id, "loss")) == 20
    assert len(client.get_metric_history(bad.info.run_id, "loss")) < 20
    assert good.data.tags["best_checkpoint"]
    artifacts = {a.path for a in client.list_artifacts(parent[0].info.run_id)}
    assert {"s-results.csv", "s-accuracy.png"} <= artifacts
