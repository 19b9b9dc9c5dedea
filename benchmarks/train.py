"""Training throughput: the Ray Train run (2 workers, DDP on gloo, Ray Data ingest) against a
plain single-process torch loop with the same model, data, global batch and total cores, in
alternating rounds of one run. Prints samples/s, the ratio by round, and where each spends its
time: data vs compute, and the cores each kind of process used during the timed steps.

    .venv/bin/python benchmarks/train.py --images 2048 --steps 40 --rounds 2
"""

from __future__ import annotations

import argparse
import itertools
import os
import shutil
import tarfile
import tempfile
import threading
import time
from collections import Counter
from pathlib import Path

import mlflow
import torch
from synthetic import generate

from biocap_ray.config import load_config
from biocap_ray.models.clip import build_model
from biocap_ray.runtime import local_options
from biocap_ray.train.ingest import training_rows
from biocap_ray.train.loop import build_optimizer, compute_loss, cosine_with_warmup

MODEL = "biocap-small"


def _kind(cmd: str) -> str | None:
    """What a process is, by its command line: the Ray processes a training run starts."""
    if cmd.startswith("ray::RayTrainWorker"):
        return "trainers"
    if cmd.startswith("ray::SplitCoordinator"):
        return "split coordinator"
    if cmd.startswith("ray::") and any(k in cmd for k in ("MapWorker", "MapBatches", "Read", "IDLE")):
        return "ingest tasks"
    if cmd.startswith("ray::") or "/ray/" in cmd:
        return "ray system"  # raylet, GCS, agents, Ray Train's controller
    return None


class CoreShares:
    """Samples every second the CPU seconds of this machine's Ray processes by kind (and of
    this process, and the idle cores), keeping a dead process's last reading, so that the cores
    each kind used between two moments of a run can be read afterwards (:meth:`between`)."""

    def __init__(self):
        import psutil

        self._psutil, self.samples, self._last = psutil, [], {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self):
        self.samples.append((time.time(), self._read()))
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()

    def _read(self) -> dict[str, float]:
        for proc in self._psutil.process_iter(["cmdline"]):
            try:
                kind = "driver" if proc.pid == os.getpid() else _kind(" ".join(proc.info["cmdline"] or []))
                if kind:
                    cpu = proc.cpu_times()
                    self._last[proc.pid] = (kind, cpu.user + cpu.system)
            except (self._psutil.Error, OSError):
                continue
        totals: dict[str, float] = {"idle": self._psutil.cpu_times().idle}
        for kind, cpu in self._last.values():
            totals[kind] = totals.get(kind, 0.0) + cpu
        return totals

    def _run(self):
        while not self._stop.wait(1.0):
            self.samples.append((time.time(), self._read()))

    def between(self, start: float, end: float) -> dict[str, float]:
        """Cores used by each kind from the sample nearest ``start`` to the one nearest ``end``."""
        (t0, a), (t1, b) = (min(self.samples, key=lambda s: abs(s[0] - t)) for t in (start, end))
        return {k: (b.get(k, 0.0) - a.get(k, 0.0)) / (t1 - t0) for k in b}

    def processes(self) -> dict[str, int]:
        """How many processes of each kind were seen, alive or not: every Ray worker process,
        even idle, costs about 0.005-0.01 of a core (the main thread's periodic wake-ups)."""
        return Counter(kind for kind, _ in self._last.values())


def plain_loop(shards: list[Path], cfg, steps: int, threads: int) -> tuple[float, float, float, dict]:
    """Decode, augment, tokenise and train in one process: (samples/s, data s, compute s, cores
    used), over the timed steps."""
    import json

    import open_clip
    import psutil
    import pyarrow as pa

    torch.set_num_threads(threads)
    t = cfg.train
    torch.manual_seed(t.seed)
    model, _ = build_model(t.model, None, t.dual_projector, False)
    model.train()
    opt = build_optimizer(model, t)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, cosine_with_warmup(t.warmup_steps, steps))
    loss_fn = open_clip.ClipLoss()
    batch_size = t.batch_size * t.num_workers

    def batches():
        """The Ray Data ingest's per-record work (the same ``training_rows``), in this process."""
        rows = []
        for shard in itertools.cycle(shards):  # epochs until the steps are done
            with tarfile.open(shard) as tf:
                sample = {}
                for member in tf:
                    key, ext = member.name.split(".", 1)
                    sample[ext] = tf.extractfile(member).read()
                    if ext == "json":
                        rows.append({**json.loads(sample["json"]), "uid": key, "image": sample["jpg"], "caption": None})
                        sample = {}
                        if len(rows) == batch_size:
                            out = training_rows(pa.Table.from_pylist(rows), t.model, t.caption_fallback,
                                                cfg.data.max_image_pixels)
                            yield {k: torch.from_numpy(v) for k, v in out.items()}
                            rows = []

    data_s = compute_s = 0.0
    done = 0
    it = batches()
    start = time.perf_counter()
    for step in range(steps + 3):
        if step == 3:
            start, data_s, compute_s = time.perf_counter(), 0.0, 0.0
            cpu, idle = time.process_time(), psutil.cpu_times().idle
        t0 = time.perf_counter()
        batch = next(it)
        t1 = time.perf_counter()
        loss, _ = compute_loss(model, loss_fn, batch, step, cfg)
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        sched.step()
        t2 = time.perf_counter()
        data_s += t1 - t0
        compute_s += t2 - t1
        done += batch_size if step >= 3 else 0
    wall = time.perf_counter() - start
    cores = {"driver": (time.process_time() - cpu) / wall, "idle": (psutil.cpu_times().idle - idle) / wall}
    return done / wall, data_s, compute_s, cores


def ray_run(folder: Path, cfg, steps: int) -> tuple[float, float, float, dict, dict]:
    """Train with Ray: (samples/s, data s and compute s per worker, cores used by kind), over
    the timed steps, and the processes of each kind seen during the run."""
    from biocap_ray.train.run import train

    out = Path(tempfile.mkdtemp(prefix="bench-train-"))
    with CoreShares() as shares:
        train(str(folder), str(out), cfg, run_name="bench")
    mlflow.set_tracking_uri(f"sqlite:///{out / 'mlflow.db'}")
    run = mlflow.search_runs(experiment_names=["biocap"], output_format="list")[0]
    client = mlflow.MlflowClient()

    def history(key):
        return sorted(client.get_metric_history(run.info.run_id, key), key=lambda m: m.step)

    rates = history("samples_per_s_per_worker")
    data, compute = ([m.value for m in history(k)] for k in ("data_wait_s", "compute_s"))
    warm = 3  # skip start-up steps, as for the plain loop
    seconds = sum(cfg.train.batch_size / r.value for r in rates[warm:])  # each logged step is one batch per worker
    rate = cfg.train.num_workers * cfg.train.batch_size * len(rates[warm:]) / seconds
    shutil.rmtree(out)
    # each step's metrics are logged as it ends: the timed steps run from step ``warm``'s log on
    cores = shares.between(rates[warm - 1].timestamp / 1000, rates[-1].timestamp / 1000)
    return rate, sum(data[warm:]), sum(compute[warm:]), cores, shares.processes()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=2048)
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--batch-size", type=int, default=32, help="per worker")
    parser.add_argument("--rounds", type=int, default=2, help="timed runs of each, alternating")
    parser.add_argument("--workdir", default="/tmp/biocap_bench")
    args = parser.parse_args()

    import ray

    shards = generate(Path(args.workdir) / f"synthetic-{args.images}", args.images)
    overrides = [f"train.model={MODEL}", f"train.batch_size={args.batch_size}", f"train.max_steps={args.steps + 3}",
                 "train.epochs=100", "train.log_every=1", f"train.checkpoint_every={args.steps + 3}",
                 "train.cpus_per_worker=0.7", "train.prefetch_batches=2",
                 "data.num_cpus_per_task=0.2", "train.data_actors=1",
                 "data.batch_size=64"]
    cfg = load_config("local", overrides)
    os.environ["OMP_NUM_THREADS"] = "1"  # one core per Ray worker, two for the plain loop
    # Alternating rounds, Ray stopped while the plain loop runs, so that a change in the
    # machine's load falls on both (these machines are noisy)
    runs: dict[str, list] = {"ray train (2 workers)": [], "plain torch loop": []}
    for _ in range(args.rounds):
        ray.init(**local_options(2), include_dashboard=False, log_to_driver=False,  # as ``init_ray`` starts it
                 runtime_env={"env_vars": {"OMP_NUM_THREADS": "1"}})
        runs["ray train (2 workers)"].append(ray_run(shards[0].parent, cfg, args.steps))
        ray.shutdown()
        runs["plain torch loop"].append(plain_loop(shards, cfg, args.steps, threads=2))
        print(f"round {len(runs['plain torch loop'])}: " + ", ".join(f"{k} {v[-1][0]:.1f} samples/s"
                                                                    for k, v in runs.items()), flush=True)

    print(f"\nmodel {MODEL}, global batch {args.batch_size * 2}, {args.steps} timed steps, 2 cores each")
    print(f"{'run':<26}{'samples/s by round':>24}{'data s':>9}{'compute s':>11}")
    for name, rs in runs.items():
        print(f"{name:<26}{', '.join(f'{r[0]:.1f}' for r in rs):>24}{rs[-1][1]:>9.1f}{rs[-1][2]:>11.1f}")
    print("\ncores in use during the timed steps, last round (2 in all; the plain loop is the 'driver')")
    kinds = ["trainers", "ingest tasks", "split coordinator", "ray system", "driver", "idle"]
    print(f"{'run':<26}" + "".join(f"{k:>18}" for k in kinds))
    for name, rs in runs.items():
        print(f"{name:<26}" + "".join(f"{rs[-1][3].get(k, 0.0):>18.2f}" for k in kinds))
    seen = runs["ray train (2 workers)"][-1][4]
    print("processes seen during the Ray run, last round: " + ", ".join(f"{k} {seen.get(k, 0)}" for k in kinds[:4]))
    ratios = [r[0] / p[0] for r, p in zip(*runs.values())]
    print(f"\nratio ray/plain by round: {', '.join(f'{x:.2f}' for x in ratios)}   (data/compute s: the last "
          "round; Ray's are per worker, summed over steps)")


if __name__ == "__main__":
    main()
