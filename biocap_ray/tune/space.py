"""From the config's sweep space to Ray Tune's search space, search algorithm and scheduler."""

from __future__ import annotations

from biocap_ray.config import Config, Dimension, TuneConfig


def domain(dim: Dimension, search: str):
    """One axis as a Tune domain; Optuna samples grids as choices (it does not enumerate)."""
    from ray import tune

    if dim.grid is not None:
        return tune.choice(dim.grid) if search == "optuna" else tune.grid_search(dim.grid)
    if dim.choice is not None:
        return tune.choice(dim.choice)
    if dim.uniform is not None:
        return tune.uniform(*dim.uniform)
    return tune.loguniform(*dim.loguniform)


def param_space(t: TuneConfig) -> dict:
    if t.search == "grid":
        sampled = [k for k, d in t.space.items() if d.grid is None]
        if sampled:
            raise ValueError(f"search 'grid' needs grid values for every axis; sampled axes: {sampled}"
                             " (use search 'random' or 'optuna')")
    return {key: domain(dim, t.search) for key, dim in t.space.items()}


def search_algorithm(t: TuneConfig, seed: int):
    if t.search != "optuna":
        return None  # Tune's default: grid points crossed with random samples
    from ray.tune.search.optuna import OptunaSearch

    return OptunaSearch(metric=t.metric, mode=t.mode, seed=seed)


def scheduler(t: TuneConfig):
    if not t.early_stopping:
        return None
    from ray.tune.schedulers import ASHAScheduler

    # time is counted in checkpoint reports (each carries a validation result)
    return ASHAScheduler(time_attr="training_iteration", grace_period=t.grace_period,
                         reduction_factor=t.reduction_factor, max_t=10_000)


def trial_config(base: Config, params: dict) -> Config:
    """The base config with one trial's values (keys ``train.<field>``) put in."""
    cfg = base.model_copy(deep=True)
    for key, value in params.items():
        if key.startswith("train."):
            setattr(cfg.train, key.split(".", 1)[1], value)  # validated on assignment
    return cfg


def concurrent_trials(cfg: Config, resources: dict[str, float]) -> int:
    """How many trials the cluster runs at once: its GPUs (or CPUs) over one trial's needs."""
    t, tn = cfg.train, cfg.tune
    if t.use_gpu:
        return max(1, int(resources.get("GPU", 0) // t.num_workers))
    per_trial = t.num_workers * t.cpus_per_worker + tn.trial_cpus + cfg.data.num_cpus_per_task
    if t.data_actors != 0:  # a read task and at least one decode actor run side by side
        per_trial += cfg.data.num_cpus_per_task
    return max(1, int(resources.get("CPU", 1) // per_trial))
