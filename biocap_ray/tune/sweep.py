"""The sweep job: Ray Tune trials that are full Ray Train runs, one MLflow parent run per
sweep with a child run per trial, ASHA early stopping on validation accuracy.

Rerunning a sweep with the same output and name restores it with Tune: finished trials
stay finished, unfinished ones continue (each from its own last Ray Train checkpoint).
"""

from __future__ import annotations

import logging
import math
import tempfile

from biocap_ray import storage
from biocap_ray.config import Config, TrainConfig, TuneConfig
from biocap_ray.data.taxonomy import RANKS
from biocap_ray.plots import png, subplots
from biocap_ray.tracking import default_tracking_uri, flatten, use_experiment
from biocap_ray.train.order import unit_counts
from biocap_ray.tune.space import concurrent_trials, param_space, scheduler, search_algorithm, trial_config

log = logging.getLogger(__name__)


def run_trial(params: dict, *, src: str, out: str, base: dict, sweep: str, parent_run_id: str) -> None:
    """Tune's function trainable: one training run; Ray Train's reports reach Tune through
    ``TuneReportCallback`` (Ray Train runs inside the trial, as Train V2 intends)."""
    import mlflow
    from ray import tune
    from ray.tune.integration.ray_train import TuneReportCallback

    from biocap_ray.train.run import train

    cfg = trial_config(Config.model_validate(base), params)
    run_name = f"{sweep}-{tune.get_context().get_trial_id()}"
    result = train(src, storage.join(out, "trials"), cfg, run_name=run_name, parent_run_id=parent_run_id,
                   callbacks=[TuneReportCallback()])
    mlflow.set_tracking_uri(cfg.train.mlflow_tracking_uri)
    for run in _child_runs(parent_run_id, cfg.tune.experiment, run_name):
        mlflow.MlflowClient().set_tag(run.info.run_id, "best_checkpoint", result.get("best_checkpoint") or "")


def _child_runs(parent_run_id: str, experiment: str, run_name: str | None = None) -> list:
    import mlflow

    query = f"tags.mlflow.parentRunId = '{parent_run_id}'"
    if run_name:
        query += f" and tags.biocap_run = '{run_name}'"
    return mlflow.search_runs(experiment_names=[experiment], filter_string=query, output_format="list")


def _parent_run(tracking_uri: str, cfg: Config, name: str) -> str:
    """The sweep's MLflow run: created once, found again when the sweep is restored."""
    import mlflow

    use_experiment(tracking_uri, cfg.tune.experiment)
    found = mlflow.search_runs(filter_string=f"tags.biocap_sweep = '{name}'", output_format="list", max_results=1)
    if found:
        return found[0].info.run_id
    with mlflow.start_run(run_name=name, tags={"biocap_sweep": name, "stage": "tune"}) as run:
        params = flatten({"tune": cfg.tune.model_dump(mode="json"), "train": cfg.train.model_dump(mode="json")})
        for i in range(0, len(params), 100):
            mlflow.log_params(dict(list(params.items())[i : i + 100]))
        return run.info.run_id


def sweep(src: str, out: str, cfg: Config, name: str = "sweep") -> dict:
    """Run (or resume) the sweep ``cfg.tune`` over training runs on ``src``; results under ``out``."""
    import ray
    from ray import tune

    cfg = cfg.model_copy(deep=True)
    # trials run in other processes (and on other nodes): no paths relative to this one
    src, out = storage.absolute(src), storage.absolute(out)
    if cfg.train.val_data:
        cfg.train.val_data = storage.absolute(cfg.train.val_data)
    t, tn = cfg.train, cfg.tune
    if not (t.val_data or t.val_fraction):
        raise ValueError("a sweep compares validation accuracy: set train.val_data or train.val_fraction")
    space = param_space(tn)
    # trials find the training units' record counts cached: counting shards takes a Ray Data
    # shuffle, whose tasks do not fit in a trial's placement group
    runs = storage.join(out, "trials", "runs")
    storage.makedirs(runs)
    unit_counts(src, cfg, runs)
    tracking_uri = tn.mlflow_tracking_uri or default_tracking_uri(out)
    parent = _parent_run(tracking_uri, cfg, name)
    base = cfg.model_copy(deep=True)
    base.train.mlflow_tracking_uri, base.train.experiment = tracking_uri, tn.experiment
    trainable = tune.with_resources(
        tune.with_parameters(run_trial, src=src, out=out, base=base.model_dump(mode="json"), sweep=name,
                             parent_run_id=parent),
        {"CPU": tn.trial_cpus},
    )
    fs, root = storage.resolve(storage.join(out, "tune"))
    storage.makedirs(storage.join(out, "tune"))
    path = f"{root}/{name}"
    if tune.Tuner.can_restore(path, storage_filesystem=fs):
        log.info("restoring sweep %s: unfinished trials continue", name)
        tuner = tune.Tuner.restore(path, trainable, resume_unfinished=True, resume_errored=True,
                                   param_space=space, storage_filesystem=fs)
    else:
        concurrent = tn.max_concurrent_trials or concurrent_trials(cfg, ray.cluster_resources())
        log.info("sweep %s: %s search over %s, %d trial(s) at a time", name, tn.search, list(space), concurrent)
        tuner = tune.Tuner(
            trainable, param_space=space,
            tune_config=tune.TuneConfig(metric=tn.metric, mode=tn.mode, search_alg=search_algorithm(tn, t.seed),
                                        scheduler=scheduler(tn), num_samples=tn.num_samples,
                                        max_concurrent_trials=concurrent),
            run_config=tune.RunConfig(name=name, storage_path=root, storage_filesystem=fs if storage.is_s3(out) else None),
        )
    grid = tuner.fit()
    if grid.errors and len(grid.errors) == len(grid):
        raise RuntimeError(f"every trial of sweep {name} failed; the first: {grid.errors[0]}")
    rows = results_table(grid, cfg.tune, parent, tracking_uri)
    summary = log_results(rows, cfg, parent, out, name)
    return {"sweep": name, "trials": len(rows), "failed_trials": len(grid.errors), **summary, "mlflow_tracking_uri": storage.redact(tracking_uri),
            "mlflow_parent_run": parent}


def results_table(grid, tn: TuneConfig, parent: str, tracking_uri: str) -> list[dict]:
    """One row per trial: its parameters, how it ended, and its metrics at its best report."""
    import mlflow

    mlflow.set_tracking_uri(tracking_uri)
    children = {r.data.tags.get("biocap_run"): r for r in _child_runs(parent, tn.experiment)}
    rows = []
    for result in grid:
        trial_id = (result.metrics or {}).get("trial_id") or result.path.rstrip("/").rsplit("/", 1)[-1]
        run = next((r for n, r in children.items() if n and n.endswith(trial_id)), None)
        row = {"trial": trial_id, **{k: result.config.get(k) for k in tn.space}}
        if result.error:
            row["status"] = "error"
        elif run is not None and run.info.status == "FINISHED":
            row["status"] = "completed"
        else:
            row["status"] = "stopped early"
            if run is not None and run.info.status == "RUNNING":
                mlflow.MlflowClient().set_terminated(run.info.run_id, "KILLED")
        history = result.metrics_dataframe
        if history is not None and tn.metric in history:
            best = history[tn.metric].idxmax() if tn.mode == "max" else history[tn.metric].idxmin()
            at_best = history.loc[best]
            row["reports"] = int(history["training_iteration"].max())
            row["step"] = int(at_best.get("step", 0))
            for key in [tn.metric, "val_top3", "val_top5", *(f"val_acc_{r}" for r in RANKS)]:
                if key in at_best and not _nan(at_best[key]):
                    row[key] = float(at_best[key])
        row["mlflow_run"] = run.info.run_id if run is not None else ""
        rows.append(row)
    return sorted(rows, key=lambda r: r["trial"])


def _nan(value) -> bool:
    return isinstance(value, float) and math.isnan(value)


def log_results(rows: list[dict], cfg: Config, parent: str, out: str, name: str) -> dict:
    """The results table (CSV) and the accuracy-vs-caption-weighting plot, beside the outputs
    and on the parent run; returns the best trial."""
    import mlflow
    import pandas as pd

    tn = cfg.tune
    table = pd.DataFrame(rows)
    files = {f"{name}-results.csv": table.to_csv(index=False).encode(),
             f"{name}-accuracy.png": plot_accuracy(rows, cfg.train)}
    for fname, data in files.items():
        storage.write_bytes(storage.join(out, fname), data)
    scored = [r for r in rows if tn.metric in r]
    best = (max if tn.mode == "max" else min)(scored, key=lambda r: r[tn.metric]) if scored else None
    client = mlflow.MlflowClient()
    with tempfile.TemporaryDirectory() as d:
        for fname, data in files.items():
            open(f"{d}/{fname}", "wb").write(data)
            client.log_artifact(parent, f"{d}/{fname}")
    if best:
        client.log_metric(parent, f"best_{tn.metric}", best[tn.metric])
        client.set_tag(parent, "best_trial", best["trial"])
        client.set_tag(parent, "best_params", str({k: best.get(k) for k in tn.space}))
    client.set_terminated(parent, "FINISHED")
    print(table.to_string(index=False))
    return {"best_trial": best["trial"] if best else None, f"best_{tn.metric}": best[tn.metric] if best else None,
            "best_params": {k: best.get(k) for k in tn.space} if best else None,
            "results": storage.redact(storage.join(out, f"{name}-results.csv"))}


def plot_accuracy(rows: list[dict], t: TrainConfig) -> bytes:
    """Top-1 (and accuracy at every rank) against the caption weighting, one line per mode."""
    keys = [k for k in ("val_top1", *(f"val_acc_{r}" for r in RANKS)) if any(k in r for r in rows)]
    fig, ax = subplots(figsize=(7, 4))
    for mode in sorted({str(r.get("train.mode") or t.mode) for r in rows}):
        mine = sorted((r for r in rows if str(r.get("train.mode") or t.mode) == mode),
                      key=lambda r: r.get("train.caption_weight", t.caption_weight))
        x = [r.get("train.caption_weight", t.caption_weight) for r in mine]
        for key in keys:
            ax.plot(x, [100 * r.get(key, float("nan")) for r in mine], marker="o",
                    label=f"{key.removeprefix('val_')} ({mode})", linewidth=2.5 if key == "val_top1" else 1)
    ax.set_xlabel("caption weighting (caption probability in sample mode, w in joint mode)")
    ax.set_ylabel("validation zero-shot accuracy (%)")
    ax.set_title("Accuracy against the caption-to-label weighting")
    ax.legend(fontsize="x-small", ncol=2)
    return png(fig)
