"""Scenarios on a local multi-node Ray cluster (``ray.cluster_utils.Cluster``: a head and worker
nodes as separate raylets on this machine), each run in its own process so that the test
session's single-node Ray is untouched. Usage: ``python tests/multinode.py SCENARIO ARGS...``;
its report is the stdout line that starts with ``scenario report:``, a JSON object of what happened.

Scenarios:
- ``cli ARGS... [+ ARGS...]``: ``biocap-ray ARGS`` (one command after the other, separated by
  ``+``) on nodes shaped like cluster.yaml's node types; reports their exit codes and where every
  task and actor ran (node type, resources asked for).
- ``ingest-node-lost SRC DST``: ingest on two CPU nodes; one is removed abruptly once the first
  shard is written; the ingest finishes on the other node.
- ``train-node-lost SRC OUT``: the train node is removed after the second checkpoint and replaced.
- ``caption-node-lost SRC DST``: a pool of one to two engines starts on one caption node and grows
  onto a second when it joins; the first node is then removed abruptly while its engine works,
  the run goes on on the second, and a replacement node joins (as the autoscaler brings one up
  for the lost engine), where its batches rerun.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPORT = "scenario report: "


def run(scenario: str, *args: str, cwd: Path | None = None, timeout: float = 900) -> dict:
    """Run a scenario in a new process (from a test) and return its report."""
    proc = subprocess.Popen([sys.executable, str(HERE / "multinode.py"), scenario, *args], cwd=cwd or HERE.parent,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)  # the scenario and every node it started
        out, err = proc.communicate()
        raise AssertionError(f"{scenario} ran past {timeout:.0f} s:\n{(out + err)[-5000:]}") from None
    assert proc.returncode == 0, (out + err)[-5000:]
    reports = [line for line in out.splitlines() if line.startswith(REPORT)]
    assert reports, f"{scenario} printed no report:\n{(out + err)[-5000:]}"  # other output may follow it
    return json.loads(reports[-1][len(REPORT):])


_STARTED: list = []

# cluster.yaml's node types at the size of this machine: what each advertises, CPUs scaled down
CLUSTER_YAML_TYPES = {
    "cpu_worker": {"num_cpus": 1},
    "caption_gpu": {"num_cpus": 1, "resources": {"accelerator_type:L40S": 1}},
    "train_gpu": {"num_cpus": 1, "resources": {"accelerator_type:H100": 1}},
}


def _cluster(nodes: dict[str, dict], dashboard: bool = False):
    """A head that runs nothing (CPU 0, as cluster.yaml's head) and the named worker nodes."""
    from ray.cluster_utils import Cluster

    # no exit hooks: they would install signal handlers, which only the main thread may do, and
    # nodes are added from a watcher thread; the scenario's caller stops every node instead
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 0, "include_dashboard": dashboard},
                      shutdown_at_exit=False)
    _STARTED.append(cluster)
    added = {name: cluster.add_node(**args) for name, args in nodes.items()}
    cluster.wait_for_nodes()
    cluster.connect()
    return cluster, added


def _placement(cluster, nodes: dict) -> list[dict]:
    """Every task and actor this cluster ran: the node type it ran on and what it asked for."""
    from ray.util.state import list_actors, list_tasks

    types = {cluster.head_node.node_id: "head", **{n.node_id: name for name, n in nodes.items()}}
    rows = [{"kind": "actor", "name": a.class_name, "node": types.get(a.node_id, a.node_id),
             "resources": a.required_resources or {}} for a in list_actors(limit=10_000, detail=True)]
    rows += [{"kind": "task", "name": t.name, "node": types.get(t.node_id, t.node_id),
              "resources": t.required_resources or {}}
             for t in list_tasks(limit=10_000, detail=True) if t.type == "NORMAL_TASK" and t.node_id]
    return rows


def cli(*argv: str) -> dict:
    """``biocap-ray`` commands on cluster.yaml's node types."""
    from biocap_ray.cli import main

    cluster, nodes = _cluster(CLUSTER_YAML_TYPES, dashboard=True)
    commands, current = [], []
    for arg in argv:
        if arg == "+":
            commands.append(current)
            current = []
        else:
            current.append(arg)
    codes = []
    for command in [*commands, current]:
        codes.append(main(command))
        if codes[-1]:
            break
    return {"exit_codes": codes, "placement": _placement(cluster, nodes)}


def _when(condition, then, timeout_s: float = 300.0, every_s: float = 0.05) -> threading.Thread:
    """Run ``then()`` in a thread as soon as ``condition()`` holds."""

    def watch():
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if condition():
                then()
                return
            time.sleep(every_s)

    thread = threading.Thread(target=watch, daemon=True)
    thread.start()
    return thread


def ingest_node_lost(src: str, dst: str) -> dict:
    from biocap_ray.config import load_config
    from biocap_ray.data.ops import convert

    cluster, nodes = _cluster({"cpu-a": {"num_cpus": 1}, "cpu-b": {"num_cpus": 1}})
    cfg = load_config("local", ["data.samples_per_shard=8", "data.batch_size=4", "data.num_cpus_per_task=1"]).data
    removed: list[float] = []

    def remove():
        cluster.remove_node(nodes["cpu-b"], allow_graceful=False)
        removed.append(time.monotonic())

    watcher = _when(lambda: any(Path(dst).glob("*.tar")), remove)
    result = convert(src, dst, cfg)
    finished = time.monotonic()
    watcher.join(timeout=5)
    return {**result, "node_removed_before_the_end": bool(removed) and removed[0] < finished}


def train_node_lost(src: str, out: str) -> dict:
    """Training on the train node; the node is removed once the second checkpoint is registered
    and a new one joins a few seconds later (as the autoscaler replaces a reclaimed node). A
    checkpoint at every step makes each step take a Ray Train report (about a second): the
    removal lands well before the last step however slowly the watcher is scheduled."""
    import mlflow

    from biocap_ray.config import load_config
    from biocap_ray.train.run import _latest_step, train

    cluster, nodes = _cluster({"cpu_worker": CLUSTER_YAML_TYPES["cpu_worker"],
                               "train_gpu": CLUSTER_YAML_TYPES["train_gpu"]})
    cfg = load_config("local", ["train.accelerator_type=H100", "train.cpus_per_worker=0.25", "train.batch_size=2",
                                "train.max_steps=8", "train.checkpoint_every=1", "train.val_fraction=0",
                                "data.batch_size=4"])
    events: list[str] = []
    removed_after: list[int] = []

    def replace_node():
        removed_after.append(_latest_step(str(Path(out, "runs", "spot"))))
        cluster.remove_node(nodes["train_gpu"], allow_graceful=False)
        events.append("removed")
        time.sleep(3)
        cluster.add_node(**CLUSTER_YAML_TYPES["train_gpu"])
        events.append("added")

    # once Ray Train has registered a checkpoint (the one a restart resumes from), not when its
    # files merely exist: a node lost while a checkpoint is written resumes from the one before
    watcher = _when(lambda: _latest_step(str(Path(out, "runs", "spot"))) >= 2, replace_node)
    summary = train(src, out, cfg, run_name="spot")
    watcher.join(timeout=30)
    mlflow.set_tracking_uri(summary["mlflow_tracking_uri"])
    run = next(r for r in mlflow.search_runs(search_all_experiments=True, output_format="list")
               if r.data.tags.get("biocap_run") == "spot")
    steps = [m.step for m in mlflow.MlflowClient().get_metric_history(run.info.run_id, "loss")]
    return {**summary, "events": events, "removed_after_step": removed_after[0] if removed_after else None,
            "loss_steps": steps}


def caption_node_lost(src: str, dst: str) -> dict:
    """A caption pool configured as a range of one to two engines, one engine per caption node.
    The run starts on one caption node; a second joins once captions are being written, and the
    pool grows onto it. Once both engines work, the first node is removed abruptly, the run goes
    on on the second, and 10 s later a replacement node joins (as the autoscaler brings one up
    for the lost engine), where the lost engine restarts and its batches rerun."""
    import ray

    from biocap_ray.caption.run import caption
    from biocap_ray.config import load_config

    # two CPUs per caption node, as Ray Data schedules an engine only within its CPU budget
    # (the real node has 4 to 8); one engine per node, as on a g6e.xlarge: each node declares one
    # GPU, which the engine asks for (no CUDA here, so it computes on the CPU)
    caption_node = {**CLUSTER_YAML_TYPES["caption_gpu"], "num_cpus": 2, "num_gpus": 1}
    cluster, nodes = _cluster({"cpu_worker": CLUSTER_YAML_TYPES["cpu_worker"], "caption-a": caption_node})
    # the transformers engine: the pool and its losses are Ray Data's whatever the engine, and a
    # vLLM engine takes 45-90 s to start on a 2-core machine
    cfg = load_config("local", ["caption.engine=transformers", "caption.accelerator_type=L40S",
                                "caption.concurrency=[1,2]", "caption.num_gpus_per_engine=1", "caption.batch_size=2",
                                "caption.rows_per_file=4", "caption.sampling.max_tokens=128", "caption.page_rows=0",
                                "data.batch_size=4"])
    events: list[tuple[str, float]] = []
    t0 = time.monotonic()

    def log_event(name: str) -> None:
        events.append((name, round(time.monotonic() - t0, 1)))

    def parts() -> int:
        return len(list(Path(dst).glob("part-*.parquet")))

    def engines_placed() -> int:  # an engine holds its node's one GPU
        return round(ray.cluster_resources().get("GPU", 0) - ray.available_resources().get("GPU", 0))

    def add_second():
        nodes["caption-b"] = cluster.add_node(**caption_node)
        log_event("caption-b added")

    at_removal: dict[str, int] = {}

    def remove_first():
        at_removal.update(parts=parts(), engines=engines_placed())
        cluster.remove_node(nodes["caption-a"], allow_graceful=False)
        log_event("caption-a removed")
        time.sleep(10)  # the run goes on on caption-b alone, until the autoscaler's replacement
        nodes["caption-c"] = cluster.add_node(**caption_node)
        log_event("caption-c added")

    # asked of the GCS (the state API lags on a busy machine)
    grown = _when(lambda: parts() > 0, add_second, timeout_s=600, every_s=0.2)
    lost = _when(lambda: "caption-b" in nodes and engines_placed() >= 2, remove_first, timeout_s=600, every_s=0.2)
    timeline: list[tuple[float, int, int]] = []  # (s, parts written, engines placed): why, if it fails

    def sample() -> bool:
        timeline.append((round(time.monotonic() - t0), parts(), engines_placed()))
        return bool(events) and events[-1][0] == "finished"

    sampler = _when(sample, lambda: None, timeout_s=900, every_s=2.0)
    summary = caption(src, dst, cfg)
    log_event("finished")
    for thread in (grown, lost, sampler):
        thread.join(timeout=5)
    return {**summary, "events": events, "at_removal": at_removal, "timeline": timeline}


SCENARIOS = {"cli": cli, "ingest-node-lost": ingest_node_lost, "train-node-lost": train_node_lost,
             "caption-node-lost": caption_node_lost}

if __name__ == "__main__":
    try:
        print(REPORT + json.dumps(SCENARIOS[sys.argv[1]](*sys.argv[2:])), flush=True)
    finally:
        import ray

        ray.shutdown()
        for started in _STARTED:
            started.shutdown()
