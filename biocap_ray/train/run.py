"""The training job: a Ray Train ``TorchTrainer`` over a streaming Ray Data ingest.

Rerunning with the same output and run name resumes from the run's latest checkpoint;
``FailureConfig`` restarts a failed worker group from it within a run.
"""

from __future__ import annotations

import logging

from biocap_ray import storage
from biocap_ray.config import Config
from biocap_ray.data import readers
from biocap_ray.data.pacing import paced
from biocap_ray.tracking import default_tracking_uri
from biocap_ray.train.export import LABEL_FILE
from biocap_ray.train.ingest import training_dataset
from biocap_ray.train.loop import VAL_METRIC, train_loop
from biocap_ray.train.validation import validation_classes, validation_dataset

log = logging.getLogger(__name__)


def plan_steps(num_records: int, cfg: Config) -> tuple[int, int]:
    """(steps per epoch, total optimizer steps); each worker drops its last partial batch."""
    t = cfg.train
    per_epoch = num_records // t.num_workers // t.batch_size // t.grad_accum_steps
    if per_epoch == 0:
        raise ValueError(
            f"{num_records} records cannot fill one step of {t.num_workers} workers x batch {t.batch_size}"
            f" x {t.grad_accum_steps} accumulation steps: lower train.batch_size"
        )
    return per_epoch, min(t.max_steps or per_epoch * t.epochs, per_epoch * t.epochs)


def train(src: str, out: str, cfg: Config, run_name: str = "biocap", *, parent_run_id: str | None = None,
          callbacks: list | None = None) -> dict:
    """Train on ``src`` (any readable dataset with captions where available) into ``out``.

    With ``train.val_data`` or ``train.val_fraction``, every checkpoint is validated (zero-shot
    ``val_top1``) and Ray Train keeps the best ones; ``export/<run>/best`` holds the best model.
    ``parent_run_id`` nests the MLflow run (a sweep's trial); ``callbacks`` go to Ray Train
    (e.g. Tune's report callback).
    """
    from ray.train import CheckpointConfig, FailureConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    # workers write exports and read data from their own working directories: no relative paths
    src, out = storage.absolute(src), storage.absolute(out)
    if cfg.train.val_data:
        cfg = cfg.model_copy(deep=True)
        cfg.train.val_data = storage.absolute(cfg.train.val_data)
    t = cfg.train
    records = readers.read_records(src, cfg.data)
    num = readers.count_records(src) or records.count()
    if t.val_fraction and not t.val_data:
        num = round(num * (1 - t.val_fraction))  # planning only: the split is by uid hash
    per_epoch, total = plan_steps(num, cfg)
    datasets = {"train": paced(training_dataset(src, cfg).materialize() if t.cache_dataset else training_dataset(src, cfg))}
    classes = None
    if t.val_data or t.val_fraction:
        classes = validation_classes(src, cfg)
        datasets["val"] = paced(validation_dataset(src, cfg, classes))
    tracking_uri = t.mlflow_tracking_uri or default_tracking_uri(out)
    export_uri = storage.join(out, "export", run_name)
    runs = storage.join(out, "runs")
    fs, path = storage.resolve(runs)
    storage.makedirs(runs)
    trainer = TorchTrainer(
        train_loop,
        train_loop_config={"cfg": cfg.model_dump(mode="json"), "run_name": run_name, "total_steps": total,
                           "tracking_uri": tracking_uri, "export_uri": export_uri, "val_classes": classes,
                           "parent_run_id": parent_run_id},
        scaling_config=ScalingConfig(num_workers=t.num_workers, use_gpu=t.use_gpu,
                                     resources_per_worker={"CPU": t.cpus_per_worker},
                                     accelerator_type=t.accelerator_type if t.use_gpu else None),
        run_config=RunConfig(
            name=run_name, storage_path=path, storage_filesystem=fs if storage.is_s3(runs) else None,
            failure_config=FailureConfig(max_failures=t.max_failures),
            checkpoint_config=CheckpointConfig(
                num_to_keep=2, **({"checkpoint_score_attribute": VAL_METRIC, "checkpoint_score_order": "max"}
                                  if classes else {})),
            callbacks=callbacks,
        ),
        datasets=datasets,
    )
    log.info("training %s on %d records: %d steps/epoch, %d steps", run_name, num, per_epoch, total)
    result = trainer.fit()
    metrics = result.metrics or {}
    best = max(result.best_checkpoints, key=lambda cm: cm[1].get(VAL_METRIC, -1), default=None) if classes else None
    return {
        "run": run_name,
        "records": num,
        "steps": metrics.get("step"),
        "final_loss": metrics.get("loss"),
        "restored_from_step": metrics.get("restored_from_step"),
        "checkpoint": storage.redact(result.checkpoint.path) if result.checkpoint else None,
        "export": storage.redact(storage.join(export_uri, LABEL_FILE)),
        **({VAL_METRIC: metrics.get(VAL_METRIC), "best_" + VAL_METRIC: best[1].get(VAL_METRIC),
            "best_checkpoint": storage.redact(best[0].path), "best_export": storage.redact(storage.join(export_uri, "best"))}
           if best else {}),
        "mlflow_tracking_uri": storage.redact(tracking_uri),
    }
