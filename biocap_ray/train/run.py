"""The training job: a Ray Train ``TorchTrainer`` over a streaming Ray Data ingest.

Rerunning with the same output and run name resumes from the run's latest checkpoint, and so
does a restart after a failure within a run.
"""

from __future__ import annotations

import logging

from biocap_ray import storage
from biocap_ray.config import Config, TrainConfig
from biocap_ray.data.pacing import paced
from biocap_ray.models.checkpoints import LABEL_FILE
from biocap_ray.tracking import default_tracking_uri
from biocap_ray.train.ingest import training_dataset
from biocap_ray.train.loop import VAL_METRIC, LoopArgs, train_loop
from biocap_ray.train.order import plan, unit_counts
from biocap_ray.train.validation import validation_classes, validation_dataset

log = logging.getLogger(__name__)


def plan_steps(num_records: int, t: TrainConfig) -> tuple[int, int]:
    """(steps per epoch, total optimizer steps); each worker drops its last partial batch."""
    per_epoch = num_records // t.num_workers // t.batch_size // t.grad_accum_steps
    if per_epoch == 0:
        raise ValueError(
            f"{num_records} records cannot fill one step of {t.num_workers} workers x batch {t.batch_size}"
            f" x {t.grad_accum_steps} accumulation steps: lower train.batch_size"
        )
    return per_epoch, min(t.max_steps or per_epoch * t.epochs, per_epoch * t.epochs)


def _latest_step(run_dir: str) -> int:
    """The step of the run's latest persisted checkpoint (0 for a new run)."""
    from ray.train import Result

    fs, path = storage.resolve(run_dir)
    try:
        result = Result.from_path(path, storage_filesystem=fs if storage.is_s3(run_dir) else None)
    except RuntimeError:  # no run there yet, or none of its checkpoints was persisted
        return 0
    return int((result.metrics or {}).get("step") or 0)


def train(src: str, out: str, cfg: Config, run_name: str = "biocap", *, parent_run_id: str | None = None,
          callbacks: list | None = None) -> dict:
    """Train on ``src`` (any readable dataset with captions where available) into ``out``.

    With ``train.val_data`` or ``train.val_fraction``, every checkpoint is validated (zero-shot
    ``val_top1``) and Ray Train keeps the best ones; ``export/<run>/best`` holds the best model.
    ``parent_run_id`` nests the MLflow run (a sweep's trial); ``callbacks`` go to Ray Train
    (e.g. Tune's report callback).

    A failed worker group is restarted (at most ``train.max_failures`` times) from the latest
    checkpoint with a data plan that starts at that checkpoint's position, so the records it
    already trained on are neither read nor decoded again (see ``train.order``).
    """
    from ray.train import CheckpointConfig, FailureConfig, RunConfig, ScalingConfig, TrainingFailedError
    from ray.train.torch import TorchTrainer

    from biocap_ray.runtime import progress_as_log_lines

    progress_as_log_lines()  # also in a sweep's trial actor, which started its own Ray Data context
    # workers write exports and read data from their own working directories: no relative paths
    src, out = storage.absolute(src), storage.absolute(out)
    if cfg.train.val_data:
        cfg = cfg.model_copy(deep=True)
        cfg.train.val_data = storage.absolute(cfg.train.val_data)
    t = cfg.train
    runs = storage.join(out, "runs")
    storage.makedirs(runs)
    units, counts = unit_counts(src, cfg, runs)
    num = sum(counts)  # records in the training split
    per_epoch, total = plan_steps(num, cfg.train)
    classes = validation_classes(src, cfg) if t.val_data or t.val_fraction else None
    tracking_uri = t.mlflow_tracking_uri or default_tracking_uri(out)
    export_uri = storage.join(out, "export", run_name)
    fs, path = storage.resolve(runs)
    step_records = t.batch_size * t.grad_accum_steps * t.num_workers
    log.info("training %s on %d records in %d units: %d steps/epoch, %d steps", run_name, num, len(units),
             per_epoch, total)
    failures = skipped = 0
    while True:
        start = _latest_step(storage.join(runs, run_name))
        # one spare epoch: records that fail to decode are left out of batches, not of the counts
        order, skipped = plan(counts, t.seed, t.epochs + 1, start * step_records)
        if start:
            log.info("resuming %s at step %d: %d records in %d units before it are not read again",
                     run_name, start, skipped, t.epochs * len(units) + len(units) - len(order))
        datasets = {"train": paced(training_dataset(src, cfg, order))}
        if classes:
            datasets["val"] = paced(validation_dataset(src, cfg, classes))
        trainer = TorchTrainer(
            train_loop,
            train_loop_config={"args": LoopArgs(cfg=cfg.model_dump(mode="json"), run_name=run_name, total_steps=total,
                                                steps_per_epoch=per_epoch, tracking_uri=tracking_uri,
                                                export_uri=export_uri, val_classes=classes,
                                                parent_run_id=parent_run_id)},
            scaling_config=ScalingConfig(num_workers=t.num_workers, use_gpu=t.use_gpu,
                                         resources_per_worker={"CPU": t.cpus_per_worker},
                                         accelerator_type=t.accelerator_type),
            run_config=RunConfig(
                name=run_name, storage_path=path, storage_filesystem=fs if storage.is_s3(runs) else None,
                # restarts are this loop's: each one gets a data plan from its checkpoint onwards
                failure_config=FailureConfig(max_failures=0),
                checkpoint_config=CheckpointConfig(
                    num_to_keep=2, **({"checkpoint_score_attribute": VAL_METRIC, "checkpoint_score_order": "max"}
                                      if classes else {})),
                callbacks=callbacks,
            ),
            datasets=datasets,
        )
        try:
            result = trainer.fit()
            break
        except TrainingFailedError as exc:
            failures += 1
            if t.max_failures != -1 and failures > t.max_failures:
                raise
            log.warning("training %s failed (%s); restarting from its latest checkpoint (failure %d of %s)",
                        run_name, exc, failures, "unlimited" if t.max_failures == -1 else t.max_failures)
    metrics = result.metrics or {}
    best = max(result.best_checkpoints, key=lambda cm: cm[1].get(VAL_METRIC, -1), default=None) if classes else None
    return {
        "run": run_name,
        "records": num,
        "steps": metrics.get("step"),
        "final_loss": metrics.get("loss"),
        "restored_from_step": metrics.get("restored_from_step"),
        "restarts": failures,
        "records_skipped_on_resume": skipped,  # by the last (re)start: never read or decoded
        "checkpoint": storage.redact(_uri(result.checkpoint.path, runs)) if result.checkpoint else None,
        "export": storage.redact(storage.join(export_uri, LABEL_FILE)),
        **({VAL_METRIC: metrics.get(VAL_METRIC), "best_" + VAL_METRIC: best[1].get(VAL_METRIC),
            "best_checkpoint": storage.redact(_uri(best[0].path, runs)), "best_export": storage.redact(storage.join(export_uri, "best"))}
           if best else {}),
        "mlflow_tracking_uri": storage.redact(tracking_uri),
    }


def _uri(path: str, runs: str) -> str:
    """A checkpoint's URI: Ray Train reports paths within its filesystem, without the s3:// scheme."""
    return f"s3://{path.lstrip('/')}" if storage.is_s3(runs) and not storage.is_s3(path) else path
