"""MLflow helpers: one place that sets tracking URIs, flattens configs into params and keeps
secrets out of them."""

from __future__ import annotations

import os
import re
from pathlib import Path

from biocap_ray import storage

_SECRET_KEY = re.compile(r"(secret|token|password|access_key|credential)", re.IGNORECASE)


# Read once, at import: MLflow's own set_tracking_uri rewrites this variable in the process.
_ENVIRONMENT_URI = os.environ.get("MLFLOW_TRACKING_URI")


def default_tracking_uri(output_uri: str) -> str:
    """``MLFLOW_TRACKING_URI`` of the job's environment (a cluster's tracking server), else
    embedded: a sqlite file beside a local output, or in the working directory for s3://."""
    if _ENVIRONMENT_URI:
        return _ENVIRONMENT_URI
    if storage.is_s3(output_uri):
        return f"sqlite:///{os.path.abspath('mlflow.db')}"
    os.makedirs(os.path.abspath(output_uri), exist_ok=True)
    return f"sqlite:///{os.path.join(os.path.abspath(output_uri), 'mlflow.db')}"


def use_experiment(tracking_uri: str, name: str) -> None:
    """Point MLflow at ``tracking_uri`` and experiment ``name``. With an embedded sqlite store,
    artifacts go to ``mlartifacts/`` beside the database, not into the working directory."""
    import mlflow

    mlflow.set_tracking_uri(tracking_uri)
    if mlflow.get_experiment_by_name(name) is None and tracking_uri.startswith("sqlite:///"):
        folder = os.path.join(os.path.dirname(tracking_uri.removeprefix("sqlite:///")), "mlartifacts")
        try:
            mlflow.create_experiment(name, artifact_location=Path(folder).as_uri())
        except mlflow.exceptions.MlflowException:
            pass  # another process created it first
    mlflow.set_experiment(name)


def flatten(tree: dict, prefix: str = "") -> dict[str, str]:
    """``{"train": {"lr": 1e-4}}`` → ``{"train.lr": "0.0001"}``; secret-looking keys are dropped."""
    out: dict[str, str] = {}
    for key, value in tree.items():
        name = f"{prefix}{key}"
        if _SECRET_KEY.search(key):
            continue
        if isinstance(value, dict):
            out.update(flatten(value, f"{name}."))
        else:
            out[name] = storage.redact(str(value))[:500]
    return out
