"""Rank-0 MLflow tracking of a training run; the other ranks do nothing.

A restarted run (after a failure, or rerun with the same name) continues the same MLflow run.
"""

from __future__ import annotations

import logging
import os
import tempfile

from biocap_ray import storage
from biocap_ray.tracking import flatten, use_experiment

log = logging.getLogger(__name__)


class RankZeroTracker:
    def __init__(self, cfg, run_name: str, tracking_uri: str, run_id: str | None, rank: int,
                 parent_run_id: str | None = None):
        self.rank, self.run_id = rank, run_id
        if rank != 0:
            return
        import mlflow

        use_experiment(tracking_uri, cfg.train.experiment)
        if run_id is None:
            found = mlflow.search_runs(filter_string=f"tags.biocap_run = '{run_name}'", max_results=1,
                                       output_format="list")
            run_id = found[0].info.run_id if found else None
        tags = {"biocap_run": run_name, "stage": "train"}
        if parent_run_id:  # a sweep's trial: nested under the sweep's run
            tags["mlflow.parentRunId"] = parent_run_id
        run = mlflow.start_run(run_id=run_id, run_name=None if run_id else run_name, tags=tags)
        self.run_id = run.info.run_id
        if run_id is None:
            params = flatten(cfg.model_dump(mode="json"))
            for i in range(0, len(params), 100):
                mlflow.log_params(dict(list(params.items())[i : i + 100]))

    def log(self, metrics: dict, step: int) -> None:
        if self.rank == 0:
            import mlflow

            mlflow.log_metrics({k: float(v) for k, v in metrics.items() if isinstance(v, (int, float))}, step=step)

    def export(self, model, export_uri: str, tags: dict | None = None) -> None:
        """Rank 0 writes the open_clip checkpoint(s) to ``export_uri`` and logs them as artifacts."""
        if self.rank != 0:
            return
        import mlflow

        from biocap_ray.models.checkpoints import export

        folder = export_uri.rstrip("/").rsplit("/", 1)[-1]
        with tempfile.TemporaryDirectory() as d:
            for f in export(model, d):
                storage.write_bytes(storage.join(export_uri, os.path.basename(f)), open(f, "rb").read())
                mlflow.log_artifact(f, artifact_path=f"export/{folder}")
        mlflow.set_tags({k: str(v) for k, v in (tags or {}).items()})

    def finish(self, model, export_uri: str) -> None:
        """The final model's export; ends the MLflow run."""
        if self.rank != 0:
            return
        import mlflow

        self.export(model, export_uri, {"export_uri": storage.redact(export_uri)})
        mlflow.end_run()
