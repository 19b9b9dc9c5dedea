"""MLflow helpers: one place that sets tracking URIs, flattens configs into params and keeps
secrets out of them."""

from __future__ import annotations

import hashlib
import hmac
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


# --- the cluster's tracking server: MLflow's basic-auth app ------------------------------------

MLFLOW_USER = "biocap"


def ray_auth_token() -> str | None:
    """The Ray cluster's auth token, where Ray itself looks: ``RAY_AUTH_TOKEN``, the file
    ``RAY_AUTH_TOKEN_PATH``, or ``~/.ray/auth_token`` (cluster.yaml mounts it on every node)."""
    if os.environ.get("RAY_AUTH_TOKEN", "").strip():
        return os.environ["RAY_AUTH_TOKEN"].strip()
    path = Path(os.environ.get("RAY_AUTH_TOKEN_PATH") or Path.home() / ".ray" / "auth_token")
    try:
        return path.read_text().strip() or None
    except OSError:
        return None


def mlflow_credentials() -> dict[str, str]:
    """The tracking server's login, as the environment variables MLflow's client reads.

    The password is derived from the Ray auth token (an HMAC of it), which every node of the
    cluster already holds: the head's server and every process on every node agree on it
    without it being stored, sent or logged anywhere, and leaking it does not leak the token.
    Whoever holds the token can run any code on the cluster, so it grants nothing more.
    """
    token = ray_auth_token()
    if not token:
        raise FileNotFoundError(
            "no Ray auth token (RAY_AUTH_TOKEN, RAY_AUTH_TOKEN_PATH or ~/.ray/auth_token): "
            "run `ray get-auth-token --generate` before `ray up`"
        )
    password = hmac.new(token.encode(), b"biocap-ray mlflow tracking", hashlib.sha256).hexdigest()
    return {"MLFLOW_TRACKING_USERNAME": MLFLOW_USER, "MLFLOW_TRACKING_PASSWORD": password}
