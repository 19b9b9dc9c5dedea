"""The job entry points as users run them: `ray job submit --working-dir <repo> -- python jobs/...`
against a real local Ray head started with the `ray` CLI (dashboard + job server, token auth)."""

from __future__ import annotations

import csv
import json
import os
import re
import secrets
import shlex
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


def _stop_session(proc: subprocess.Popen) -> None:
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
    # not this process's Ray or MLflow settings (MLflow's set_tracking_uri exports its URI)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("RAY_", "MLFLOW_"))}
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
    # as cluster.yaml starts Ray on every node: with the tracking server's login in the environment
    start = f'credentials=$(biocap-ray mlflow-credentials) && eval "$credentials" && exec {shlex.join(cmd)}'
    log = open(tmp / "head.log", "wb")
    proc = subprocess.Popen(["bash", "-c", start], env=head_env, stdout=log, stderr=subprocess.STDOUT,
                            start_new_session=True)
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
        _stop_session(proc)
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
    # the transformers engine: vLLM runs through `ray job submit` in the pipeline job below
    code, out = submit(ray_head, "jobs/caption.py", str(tiny_data), str(dst), "--config", "local",
                       "--set", "caption.engine=transformers",
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


def _start_tracking_server(folder: Path, env: dict[str, str]) -> tuple[subprocess.Popen, str]:
    """scripts/mlflow_server.sh run in ``folder`` (where it keeps its user database), as the head runs it."""
    port = _free_port()
    with open(folder / "server.log", "ab") as log:
        proc = subprocess.Popen(
            ["bash", str(REPO / "scripts" / "mlflow_server.sh"), "127.0.0.1", str(port),
             f"sqlite:///{folder / 'mlflow.db'}", str(folder / "artifacts")],
            env=env, cwd=folder, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    uri = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 120
    while _http_status(f"{uri}/health") != 200:
        if proc.poll() is not None or time.monotonic() > deadline:
            _stop_session(proc)
            pytest.fail(f"the tracking server did not come up:\n{(folder / 'server.log').read_text()[-3000:]}")
        time.sleep(0.5)
    return proc, uri


@pytest.fixture(scope="module")
def tracking_server(ray_head, tmp_path_factory):
    """The cluster's tracking server as cluster.yaml starts it on the head (scripts/mlflow_server.sh:
    MLflow's basic-auth app, its login derived from the head's Ray token), on loopback."""
    folder = tmp_path_factory.mktemp("mlflow")
    proc, uri = _start_tracking_server(folder, _CLIENT_ENV[ray_head])
    try:
        yield uri, folder
    finally:
        _stop_session(proc)


def _http_status(url: str, login: tuple[str, str] | None = None) -> int:
    import base64

    headers = {}
    if login:
        headers["Authorization"] = "Basic " + base64.b64encode(":".join(login).encode()).decode()
    try:
        with urllib.request.urlopen(urllib.request.Request(url, headers=headers), timeout=5) as resp:
            return resp.status
    except urllib.error.HTTPError as exc:
        return exc.code
    except (urllib.error.URLError, OSError):
        return 0


def _login(address: str, env: dict[str, str] | None = None) -> dict[str, str]:
    """MLFLOW_TRACKING_USERNAME/PASSWORD as every node of that head's cluster derives them (or
    as a node with environment ``env`` would)."""
    env = env or _CLIENT_ENV[address]
    out = subprocess.run([str(BIN / "biocap-ray"), "mlflow-credentials"], env=env, capture_output=True, text=True,
                         check=True).stdout
    return dict(line.removeprefix("export ").split("=", 1) for line in out.splitlines())


@pytest.fixture(scope="module")
def trained(ray_head, tiny_data, tracking_server, tmp_path_factory) -> tuple[Path, int, str]:
    """The train job, run once for the tests that need its outputs, tracking to the server."""
    out_dir = tmp_path_factory.mktemp("train") / "train"
    code, out = submit(ray_head, "jobs/train.py", str(tiny_data), str(out_dir), "--name", "job",
                       "--config", "local", "--set", "train.max_steps=2", "--set", "train.batch_size=2",
                       "--set", "train.checkpoint_every=2", "--set", "train.val_fraction=0",
                       "--set", f"train.mlflow_tracking_uri={tracking_server[0]}",
                       "--set", "data.batch_size=4", submission_id="train")
    return out_dir, code, out


def test_train_job_exports_a_checkpoint_and_tracks_the_run_in_mlflow(ray_head, trained, tracking_server,
                                                                      monkeypatch):
    from mlflow.tracking import MlflowClient
    from safetensors.torch import load_file

    out_dir, code, out = trained
    assert code == 0, out[-4000:]
    export = out_dir / "export" / "job" / "open_clip_label.safetensors"
    assert export.exists() and load_file(str(export)), "an exported open_clip state dict"
    summary = last_json(job_logs(ray_head, "train"))
    assert summary["run"] == "job" and summary["steps"] == 2 and summary["records"] == 6
    assert Path(summary["export"]) == export

    # the job and its Ray Train worker logged in to the tracking server with the nodes' login
    login = _login(ray_head)
    for key, value in login.items():
        monkeypatch.setenv(key, value)
    client = MlflowClient(tracking_uri=tracking_server[0])
    experiment = client.get_experiment_by_name("biocap")
    runs = client.search_runs([experiment.experiment_id])
    assert len(runs) == 1 and runs[0].info.status == "FINISHED"
    assert client.get_metric_history(runs[0].info.run_id, "loss")
    password = login["MLFLOW_TRACKING_PASSWORD"]
    assert password not in job_logs(ray_head, "train") and password not in out
    assert not any(password in value for value in runs[0].data.params.values())
    assert not any(password in value for value in runs[0].data.tags.values())
    assert not any(password in p.read_text(errors="ignore") for p in tracking_server[1].glob("*.log"))


def test_the_tracking_server_refuses_requests_without_the_login(ray_head, tracking_server):
    uri, _ = tracking_server
    login = _login(ray_head)
    user, password = login["MLFLOW_TRACKING_USERNAME"], login["MLFLOW_TRACKING_PASSWORD"]
    api = f"{uri}/api/2.0/mlflow/experiments/search?max_results=1"
    assert _http_status(api) == 401
    assert _http_status(api, (user, "not-the-password")) == 401
    assert _http_status(api, ("admin", password)) == 401
    assert _http_status(api, (user, password)) == 200
    # the login follows the Ray token: another cluster's token gives another password
    other = subprocess.run([str(BIN / "biocap-ray"), "mlflow-credentials"], capture_output=True, text=True,
                           env={**_CLIENT_ENV[ray_head], "RAY_AUTH_TOKEN": secrets.token_hex(32)}, check=True)
    assert password not in other.stdout and "MLFLOW_TRACKING_PASSWORD=" in other.stdout


def test_the_tracking_servers_login_follows_a_new_ray_token(ray_head, tmp_path):
    """A head restarted with a new Ray token serves the new login, not the one its user database
    kept from the old token (MLflow ignores the admin settings once that user exists)."""
    api = "/api/2.0/mlflow/experiments/search?max_results=1"
    logins = []
    for token in (secrets.token_hex(32), secrets.token_hex(32)):
        env = {**_CLIENT_ENV[ray_head], "RAY_AUTH_TOKEN": token}
        proc, uri = _start_tracking_server(tmp_path, env)
        try:
            login = _login(ray_head, env)
            logins.append((login["MLFLOW_TRACKING_USERNAME"], login["MLFLOW_TRACKING_PASSWORD"]))
            assert _http_status(uri + api, logins[-1]) == 200
            if len(logins) == 2:
                assert _http_status(uri + api, logins[0]) == 401
        finally:
            _stop_session(proc)


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


def test_evaluate_job_compares_the_trained_export_with_random_weights(ray_head, tiny_data, trained, tmp_path):
    out_dir, code, _ = trained
    assert code == 0
    dst = tmp_path / "eval"
    code, out = submit(ray_head, "jobs/evaluate.py", str(tiny_data), str(dst), "--config", "local",
                       "--model", f"trained=biocap-tiny:{out_dir / 'export' / 'job'}", "--model", "biocap-tiny",
                       "--set", "evaluate.templates=photo", submission_id="evaluate")
    assert code == 0, out[-4000:]
    summary = last_json(job_logs(ray_head, "evaluate"))
    assert set(summary["models"]) == {"trained", "biocap-tiny:random"}
    assert all(m["n"] == 6 for m in summary["models"].values())
    assert "| trained |" in (dst / "report.md").read_text() and (dst / "accuracy_by_rank.png").exists()


def _mlflow_runs(db: Path) -> list:
    from mlflow.tracking import MlflowClient

    if not db.exists():
        return []
    client = MlflowClient(tracking_uri=f"sqlite:///{db}")
    experiment = client.get_experiment_by_name("biocap-tune")
    return client.search_runs([experiment.experiment_id]) if experiment else []


def test_tune_job_interrupted_resumes_its_unfinished_trial(ray_head, tiny_data, tmp_path):
    """Stop the sweep job once its first trial has finished; the resubmitted job keeps that
    trial and finishes the other one: two trials, each trained once."""
    import threading

    out_dir = tmp_path / "sweep"
    args = ["jobs/tune.py", str(tiny_data), str(out_dir), "--config", "local", "--name", "w",
            "--set", "tune.space={train.caption_weight: {grid: [0.0, 0.5]}}", "--set", "tune.early_stopping=false",
            "--set", "train.batch_size=2", "--set", "train.epochs=2", "--set", "train.checkpoint_every=2",
            "--set", f"train.val_data={tiny_data}", "--set", "train.val_fraction=0",
            "--set", "evaluate.templates=photo", "--set", "data.batch_size=4"]
    stopped: list[bool] = []

    def stop_after_first_trial():
        deadline = time.monotonic() + JOB_TIMEOUT_S
        while time.monotonic() < deadline:
            # a trial's final export comes just before its MLflow run ends; opening the database
            # any earlier could race the job's own creation of it
            if not list(out_dir.glob("trials/export/*/open_clip_label.safetensors")):
                time.sleep(0.5)
                continue
            try:
                runs = _mlflow_runs(out_dir / "mlflow.db")
            except Exception:  # the job may be creating the database right now
                runs = []
            if any(r.info.status == "FINISHED" and r.data.tags.get("mlflow.parentRunId") for r in runs):
                stopped.append(_ray_cli(ray_head, "job", "stop", "tune-1").returncode == 0)
                return
            time.sleep(0.5)

    watcher = threading.Thread(target=stop_after_first_trial, daemon=True)
    watcher.start()
    code, out = submit(ray_head, *args, submission_id="tune-1")
    watcher.join()
    assert stopped == [True], out[-3000:]
    assert "was stopped" in _ray_cli(ray_head, "job", "status", "tune-1").stdout
    children = [r for r in _mlflow_runs(out_dir / "mlflow.db") if r.data.tags.get("mlflow.parentRunId")]
    finished = [r.info.run_id for r in children if r.info.status == "FINISHED"]
    assert len(finished) == 1
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=f"sqlite:///{out_dir / 'mlflow.db'}")
    before = client.get_metric_history(finished[0], "loss")

    code, out = submit(ray_head, *args, submission_id="tune-2")
    assert code == 0, out[-4000:]
    summary = last_json(job_logs(ray_head, "tune-2"))
    assert summary["trials"] == 2 and summary["failed_trials"] == 0
    runs = _mlflow_runs(out_dir / "mlflow.db")
    children = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == summary["mlflow_parent_run"]]
    assert len(children) == 2 and all(r.info.status == "FINISHED" for r in children)
    assert sorted(float(r.data.params["train.caption_weight"]) for r in children) == [0.0, 0.5]
    # the finished trial was not trained again: its history is what it was before the stop
    after = client.get_metric_history(finished[0], "loss")
    assert [(m.step, m.value) for m in after] == [(m.step, m.value) for m in before] and after
    assert (out_dir / "w-results.csv").read_text().count("completed") == 2


def test_pipeline_job_runs_end_to_end_and_skips_what_exists(ray_head, tmp_path):
    from conftest import sample_subset

    data = sample_subset(tmp_path / "data", 12)
    out_dir = tmp_path / "run"
    args = ["jobs/pipeline.py", "--input", str(data), "--output", str(out_dir), "--config", "local",
            "--set", "train.batch_size=2", "--set", "train.checkpoint_every=4", "--set", "evaluate.templates=photo"]
    code, out = submit(ray_head, *args, submission_id="pipeline-1")
    assert code == 0, out[-4000:]
    logs = job_logs(ray_head, "pipeline-1")
    summary = last_json(logs)
    assert summary["records"] == 12 and summary["captions_written"] == 12 and summary["caption_errors"] == 0
    # the log reads as lines: no progress bar redraws (carriage returns, tqdm's "|###   | 3/12 [..]")
    assert "\r" not in logs and "\x1b[A" not in logs and not re.search(r"\d+%\|[^\n]*\| *\d+/", logs), logs[-3000:]
    # Ray Data's progress is one line per report, rows and rate, not its block of operator lines
    assert re.search(r"dataset \S+: [\d,]+(/[\d,]+)? rows", logs), logs[-3000:]
    assert "Running Dataset:" not in logs and "Total Progress:" not in logs, logs[-3000:]
    # the demo's Wikipedia file reaches prompts; the captions page sits beside the report and in MLflow
    assert summary["context_coverage"] > 0 and "species" in summary["context_levels"]
    assert "of captions had a Wikipedia excerpt" in logs and "captions.html" in summary["captions_page"]
    report = Path(summary["report"])
    assert "(captions.html)" in report.read_text() and (report.parent / "captions.html").exists()
    assert summary["train_steps"] > 0 and summary["train_loss"] > 0 and 0 <= summary["qc_pass_rate"] <= 1
    assert 0 <= summary["zero_shot_top1"] <= summary["zero_shot_top5"] <= 1
    assert list((out_dir / "captions").glob("part-*.parquet"))
    assert (Path(summary["model_export"]) / "open_clip_label.safetensors").exists()
    assert "## Zero-shot classification" in Path(summary["report"]).read_text()
    import mlflow

    mlflow.set_tracking_uri(summary["mlflow_tracking_uri"])
    runs = mlflow.search_runs(search_all_experiments=True, output_format="list")
    assert {"train", "evaluate"} <= {r.data.tags.get("stage") for r in runs}
    evaluation = next(r for r in runs if r.info.run_name == "evaluate")
    assert "report/captions.html" in {a.path for a in mlflow.MlflowClient().list_artifacts(evaluation.info.run_id,
                                                                                            "report")}

    shards = sorted(p.name for p in (out_dir / "shards").glob("*.tar"))
    code, out = submit(ray_head, *args, submission_id="pipeline-2")
    assert code == 0, out[-4000:]
    again = job_logs(ray_head, "pipeline-2")
    assert again.count("finished before") == 6, again[-3000:]  # every stage's marker was found
    assert sorted(p.name for p in (out_dir / "shards").glob("*.tar")) == shards
    assert last_json(again)["zero_shot_top1"] == summary["zero_shot_top1"]
