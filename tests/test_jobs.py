"""The job entry points as users run them: `ray job submit --working-dir <repo> -- python jobs/...`
against a real local Ray head started with the `ray` CLI (dashboard + job server, token auth)."""

from __future__ import annotations

import csv
import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from conftest import REPO, SAMPLE

pytestmark = pytest.mark.slow

BIN = Path(sys.executable).parent        # the venv the tests run in; its `ray` starts the head
RAY = BIN / "ray"
JOB_TIMEOUT_S = 420
HEAD_OUTPUT = "s3://head-side-bucket/biocap"  # what cluster.yaml sets as BIOCAP_OUTPUT on the nodes

# Client environment (auth token, PATH) per head address, filled in by the `ray_head` fixture.
_CLIENT_ENV: dict[str, dict[str, str]] = {}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _session_pids(sid: int) -> list[int]:
    """Processes of one session: everything the `ray start` below started, and nothing else."""
    pids = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                fields = Path(f"/proc/{entry}/stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(fields[3]) == sid:  # stat fields after the name: state ppid pgrp session ...
                pids.append(int(entry))
    return pids


def _signal_all(pids: list[int], sig: int) -> None:
    for pid in pids:
        try:
            os.kill(pid, sig)
        except ProcessLookupError:
            pass


def _stop_head(proc: subprocess.Popen) -> None:
    """`ray stop` would stop every Ray on this machine (other tests' too); stop only this head's
    session: SIGTERM, then SIGKILL whatever is left after a grace period."""
    _signal_all(_session_pids(proc.pid), signal.SIGTERM)
    deadline = time.monotonic() + 8
    while _session_pids(proc.pid) and time.monotonic() < deadline:
        time.sleep(0.5)
    _signal_all(_session_pids(proc.pid), signal.SIGKILL)
    proc.wait(timeout=10)


def _jobs_api_ready(address: str, token: str) -> bool:
    req = urllib.request.Request(f"{address}/api/jobs/", headers={"Authorization": f"Bearer {token}"})
    try:
        with urllib.request.urlopen(req, timeout=5) as resp:
            return resp.status == 200
    except (urllib.error.URLError, OSError):
        return False


@pytest.fixture(scope="module")
def ray_head():
    """A local Ray head with the dashboard and job server on 127.0.0.1, token auth on, 2 CPUs.

    Ray 2.60 token auth: the head requires a token when RAY_AUTH_MODE=token (or, with the mode
    unset, when a token already exists, e.g. ~/.ray/auth_token). The token comes from
    RAY_AUTH_TOKEN, the file RAY_AUTH_TOKEN_PATH, or ~/.ray/auth_token. `ray job submit` sends
    it as `Authorization: Bearer <token>` only when its own RAY_AUTH_MODE=token. Here both sides
    use a fresh token file of this fixture, so nothing depends on ~/.ray.
    """
    from ray._private.utils import get_dashboard_dependency_error

    missing = get_dashboard_dependency_error()
    if missing is not None or not RAY.exists():
        pytest.skip(f"ray job submission needs the dashboard: pip install 'ray[default]' ({missing})")

    tmp = Path(tempfile.mkdtemp(prefix="rj-", dir="/tmp"))  # short: Ray puts sockets under it
    token = secrets.token_hex(32)
    token_file = tmp / "auth_token"
    token_file.write_text(token)
    token_file.chmod(0o600)
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_")}
    env.update(RAY_AUTH_MODE="token", RAY_AUTH_TOKEN_PATH=str(token_file), RAY_USAGE_STATS_ENABLED="0",
               PATH=f"{BIN}{os.pathsep}{env.get('PATH', '')}")
    head_env = {**env, "BIOCAP_OUTPUT": HEAD_OUTPUT}  # a variable only the head has, as on a cluster
    dashboard_port = _free_port()
    ports = {"--port": _free_port(), "--dashboard-port": dashboard_port,
             "--ray-client-server-port": _free_port(), "--dashboard-agent-listen-port": _free_port(),
             "--dashboard-agent-grpc-port": _free_port(), "--runtime-env-agent-port": _free_port(),
             "--metrics-export-port": _free_port(), "--node-manager-port": _free_port(),
             "--object-manager-port": _free_port()}
    cmd = [str(RAY), "start", "--head", "--block", "--node-ip-address=127.0.0.1", "--dashboard-host=127.0.0.1",
           "--include-dashboard=true", "--num-cpus=2", f"--temp-dir={tmp / 'ray'}", "--disable-usage-stats",
           *(f"{flag}={port}" for flag, port in ports.items())]
    log = open(tmp / "head.log", "wb")
    proc = subprocess.Popen(cmd, env=head_env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    address = f"http://127.0.0.1:{dashboard_port}"
    try:
        deadline = time.monotonic() + 180
        while not _jobs_api_ready(address, token):
            if proc.poll() is not None or time.monotonic() > deadline:
                pytest.fail(f"ray head did not come up:\n{(tmp / 'head.log').read_text()[-3000:]}")
            time.sleep(1)
        _CLIENT_ENV[address] = env
        yield address
    finally:
        _CLIENT_ENV.pop(address, None)
        _stop_head(proc)
        log.close()
        shutil.rmtree(tmp, ignore_errors=True)


def _ray_cli(address: str, *args: str, timeout: float = 60) -> subprocess.CompletedProcess:
    return subprocess.run([str(RAY), *args, "--address", address], env=_CLIENT_ENV[address], cwd=REPO,
                          capture_output=True, text=True, timeout=timeout)


def submit_entrypoint(address: str, entrypoint: list[str], working_dir: Path = REPO,
                      timeout: float = JOB_TIMEOUT_S, submission_id: str | None = None) -> tuple[int, str]:
    """`ray job submit ... -- <entrypoint>`; waits for the job and returns (exit status, output).

    The working directory is uploaded without what .gitignore lists (.venv, outputs/, caches);
    the entrypoint runs in a shell on the head, where the venv's bin is first on PATH.
    """
    submission_id = submission_id or f"test-{secrets.token_hex(4)}"
    cmd = [str(RAY), "job", "submit", "--address", address, "--working-dir", str(working_dir),
           "--submission-id", submission_id, "--log-style", "record", "--log-color", "false", "--", *entrypoint]
    try:
        proc = subprocess.run(cmd, env=_CLIENT_ENV[address], cwd=REPO, capture_output=True, text=True,
                              timeout=timeout)
    except subprocess.TimeoutExpired as exc:
        _ray_cli(address, "job", "stop", submission_id)
        out = exc.stdout or ""
        out = out.decode(errors="replace") if isinstance(out, bytes) else out
        pytest.fail(f"job {submission_id} ran past {timeout:.0f} s:\n{out[-3000:]}")
    return proc.returncode, proc.stdout + proc.stderr


def submit(address: str, *args: str, working_dir: Path = REPO, timeout: float = JOB_TIMEOUT_S,
           submission_id: str | None = None) -> tuple[int, str]:
    """`ray job submit --address ADDRESS --working-dir REPO -- python ARGS...`."""
    return submit_entrypoint(address, ["python", *args], working_dir=working_dir, timeout=timeout,
                             submission_id=submission_id)


def job_logs(address: str, submission_id: str) -> str:
    """The job's own output (driver stdout and stderr), without the submit command's messages."""
    proc = _ray_cli(address, "job", "logs", submission_id)
    assert proc.returncode == 0, proc.stderr
    return proc.stdout


def last_json(text: str) -> dict:
    """The last JSON object in ``text`` that starts at the beginning of a line."""
    decoder = json.JSONDecoder()
    found, pos = None, 0
    for line in text.splitlines(keepends=True):
        if line.startswith("{"):
            try:
                found = decoder.raw_decode(text[pos:])[0]
            except json.JSONDecodeError:
                pass
        pos += len(line)
    assert isinstance(found, dict), f"no JSON summary in:\n{text[-2000:]}"
    return found


@pytest.fixture(scope="module")
def tiny_data(tmp_path_factory) -> Path:
    """Six sample images and their metadata rows, outside the repository."""
    root = tmp_path_factory.mktemp("jobs") / "data"
    (root / "images").mkdir(parents=True)
    rows = list(csv.DictReader(open(SAMPLE / "metadata.csv")))[:6]
    for r in rows:
        shutil.copy(SAMPLE / r["file"], root / r["file"])
    with open(root / "metadata.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    return root


def uids(data: Path) -> list[str]:
    return sorted(Path(r["file"]).stem for r in csv.DictReader(open(data / "metadata.csv")))


def test_jobs_need_the_token_and_run_the_uploaded_code_on_the_venv_python(ray_head):
    anonymous = {k: v for k, v in _CLIENT_ENV[ray_head].items() if not k.startswith("RAY_AUTH")}
    refused = subprocess.run([str(RAY), "job", "list", "--address", ray_head], env=anonymous,
                             capture_output=True, text=True, timeout=60)
    assert "Authentication required" in refused.stdout + refused.stderr

    # The README's cluster form: `bash -c '...'` so that variables of the head (BIOCAP_OUTPUT,
    # MLFLOW_TRACKING_URI in cluster.yaml) expand there; `ray job submit` quotes plain arguments.
    probe = ("import json, os, sys, biocap_ray; print(json.dumps({'python': sys.executable, "
             "'package': biocap_ray.__file__, 'cwd': os.getcwd(), 'files': sorted(os.listdir('.')), "
             "'arg': sys.argv[1]}))")
    code, out = submit_entrypoint(ray_head, ["bash", "-c", f'python -c "{probe}" "$BIOCAP_OUTPUT"'],
                                  submission_id="probe")
    assert code == 0, out[-3000:]
    seen = last_json(job_logs(ray_head, "probe"))
    assert Path(seen["python"]).parent == BIN
    assert Path(seen["package"]).is_relative_to(seen["cwd"]), "biocap_ray must come from the uploaded working dir"
    assert {"jobs", "biocap_ray", "pyproject.toml"} <= set(seen["files"])
    assert not {".venv", "outputs", ".git"} & set(seen["files"])
    assert seen["arg"] == HEAD_OUTPUT


def test_caption_job_writes_one_caption_row_per_uid(ray_head, tiny_data, tmp_path):
    from biocap_ray.caption import outputs

    dst = tmp_path / "captions"
    code, out = submit(ray_head, "jobs/caption.py", str(tiny_data), str(dst), "--config", "local",
                       "--set", "caption.rows_per_file=4", "--set", "caption.batch_size=4",
                       "--set", "caption.sampling.max_tokens=8", "--set", "data.batch_size=4",
                       submission_id="caption")
    assert code == 0, out[-4000:]
    parts = sorted(dst.glob("part-*.parquet"))
    assert parts and not list(dst.glob("_tmp-*")), "complete parts only"
    table = outputs.read_parts(str(dst))
    assert sorted(table.column("uid").to_pylist()) == uids(tiny_data)
    summary = last_json(job_logs(ray_head, "caption"))
    assert summary["images"] == 6 and summary["captioned"] + summary["errors"] == 6


def test_train_job_exports_a_checkpoint_and_tracks_the_run_in_mlflow(ray_head, tiny_data, tmp_path):
    from mlflow.tracking import MlflowClient
    from safetensors.torch import load_file

    out_dir = tmp_path / "train"
    code, out = submit(ray_head, "jobs/train.py", str(tiny_data), str(out_dir), "--name", "job",
                       "--config", "local", "--set", "train.max_steps=2", "--set", "train.batch_size=2",
                       "--set", "train.checkpoint_every=2", "--set", "train.val_fraction=0",
                       "--set", "data.batch_size=4", submission_id="train")
    assert code == 0, out[-4000:]
    export = out_dir / "export" / "job" / "open_clip_label.safetensors"
    assert export.exists() and load_file(str(export)), "an exported open_clip state dict"
    summary = last_json(job_logs(ray_head, "train"))
    assert summary["run"] == "job" and summary["steps"] == 2 and summary["records"] == 6
    assert Path(summary["export"]) == export

    client = MlflowClient(tracking_uri=f"sqlite:///{out_dir / 'mlflow.db'}")
    experiment = client.get_experiment_by_name("biocap")
    runs = client.search_runs([experiment.experiment_id])
    assert len(runs) == 1 and runs[0].info.status == "FINISHED"
    assert client.get_metric_history(runs[0].info.run_id, "loss")


@pytest.mark.parametrize("bad, named", [
    (("--set", "train.lr=-1"), "train.lr"),
    (("--config", "/nonexistent/biocap.yaml"), "/nonexistent/biocap.yaml"),
], ids=["negative-lr", "missing-config-file"])
def test_a_bad_config_fails_fast_with_a_message_naming_it(ray_head, tiny_data, tmp_path, bad, named):
    started = time.monotonic()
    job = f"bad-{secrets.token_hex(3)}"
    code, out = submit(ray_head, "jobs/train.py", str(tiny_data), str(tmp_path / "never"), *bad,
                       submission_id=job, timeout=120)
    assert code != 0 and time.monotonic() - started < 60, out[-2000:]
    logs = job_logs(ray_head, job)
    assert "biocap-ray: error: " in logs and named in logs, logs[-2000:]
    assert "Traceback" not in logs
    assert not (tmp_path / "never").exists(), "nothing is written before the config is valid"


# Jobs of the other stages join here, against the same `ray_head`:
#   - jobs/evaluate.py (zero-shot + retrieval of the train job's export)
#   - jobs/tune.py (a two-trial sweep of the caption-to-label weighting)
#   - jobs/pipeline.py (end to end on the tiny set, then resumed)
