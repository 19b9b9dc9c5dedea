"""MLflow helpers: one place that sets tracking URIs, flattens configs into params and keeps
secrets out of them."""

from __future__ import annotations

import os
import re

from biocap_ray import storage

_SECRET_KEY = re.compile(r"(secret|token|password|access_key|credential)", re.IGNORECASE)


def default_tracking_uri(output_uri: str) -> str:
    """``MLFLOW_TRACKING_URI`` when set (a cluster's tracking server), else embedded: a sqlite
    file beside a local output, or one in the working directory for s3:// outputs."""
    if os.environ.get("MLFLOW_TRACKING_URI"):
        return os.environ["MLFLOW_TRACKING_URI"]
    if storage.is_s3(output_uri):
        return f"sqlite:///{os.path.abspath('mlflow.db')}"
    os.makedirs(os.path.abspath(output_uri), exist_ok=True)
    return f"sqlite:///{os.path.join(os.path.abspath(output_uri), 'mlflow.db')}"


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
