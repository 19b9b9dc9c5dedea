"""Ray Tune sweeps of training runs: search spaces and trial configs (a real sweep runs in
test_notebook.py, and one interrupted and resumed as a job in test_jobs.py)."""

from __future__ import annotations

import pytest

from biocap_ray.config import ConfigError, load_config
from biocap_ray.tune.space import concurrent_trials, param_space, search_algorithm, trial_config


def test_search_spaces_become_tune_domains():
    from ray.tune.search.optuna import OptunaSearch
    from ray.tune.search.sample import Categorical, Float

    cfg = load_config("local", ["tune.search=optuna",
                                "tune.space={train.caption_weight: {grid: [0, 0.5]}, train.lr: {loguniform: [1e-5, 1e-2]},"
                                " train.mode: {choice: [sample, joint]}}"])
    space = param_space(cfg.tune)
    assert isinstance(space["train.caption_weight"], Categorical) and isinstance(space["train.lr"], Float)
    assert isinstance(search_algorithm(cfg.tune, seed=0), OptunaSearch)
    # random search is Tune's own variant generator (grid points crossed with samples), which the
    # grid sweeps of the notebook and the tune job run; what is ours is the domains it samples
    sampled = load_config("local", ["tune.search=random",
                                    "tune.space={train.lr: {loguniform: [1e-5, 1e-2]}, train.caption_weight: {uniform: [0.1, 0.4]}}"])
    assert search_algorithm(sampled.tune, seed=0) is None
    space = param_space(sampled.tune)
    lrs = space["train.lr"].sample(size=40, random_state=0)
    weights = space["train.caption_weight"].sample(size=40, random_state=0)
    assert all(1e-5 <= lr <= 1e-2 for lr in lrs) and all(0.1 <= w <= 0.4 for w in weights)
    assert sum(lr < 1e-3 for lr in lrs) >= 20  # log-uniform: two thirds below 1e-3 (uniform: a tenth)
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
    assert concurrent_trials(base, {"CPU": 2}) == 1  # 2 workers x 0.5 CPU + a driver (0.25) + decoding (0.5)
    assert concurrent_trials(base, {"CPU": 16}) == 9
    actors = load_config("local", ["train.data_actors=2"])  # + a decode actor beside the read task
    assert concurrent_trials(actors, {"CPU": 16}) == 7
    gpu = load_config("cluster")
    assert concurrent_trials(gpu, {"GPU": 16, "CPU": 200}) == 16 // gpu.train.num_workers


@pytest.mark.slow
@pytest.mark.usefixtures("ray_local")
def test_an_optuna_search_runs_two_real_trials(tmp_path):
    """Optuna draws two points from sampled domains and trains them."""
    import mlflow
    import pandas as pd
    from conftest import sample_subset

    from biocap_ray.tune.sweep import sweep

    data = sample_subset(tmp_path / "data", 16, captions=True)
    cfg = load_config("local", [
        "tune.search=optuna", "tune.num_samples=2", "tune.early_stopping=false",
        "tune.space={train.caption_weight: {uniform: [0.05, 0.45]}, train.lr: {loguniform: [1e-4, 1e-2]}}",
        "train.max_steps=2", "train.checkpoint_every=1", "train.batch_size=4", "evaluate.templates=photo",
    ])
    result = sweep(str(data), str(tmp_path / "out"), cfg, name="optuna")
    assert result["trials"] == 2 and result["failed_trials"] == 0
    table = pd.read_csv(tmp_path / "out" / "optuna-results.csv")
    assert list(table["status"]) == ["completed", "completed"]
    weights, lrs = list(table["train.caption_weight"]), list(table["train.lr"])
    assert len(set(weights)) == 2 and all(0.05 <= w <= 0.45 for w in weights)
    assert all(1e-4 <= lr <= 1e-2 for lr in lrs)
    mlflow.set_tracking_uri(result["mlflow_tracking_uri"])
    children = mlflow.search_runs(experiment_names=[cfg.tune.experiment], output_format="list",
                                  filter_string=f"tags.mlflow.parentRunId = '{result['mlflow_parent_run']}'")
    assert sorted(float(r.data.params["train.caption_weight"]) for r in children) == pytest.approx(sorted(weights))
