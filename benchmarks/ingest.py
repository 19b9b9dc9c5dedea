"""Ingest throughput: Ray Data (read shards → records → decode → resize to 224 px, at one and at
half a CPU per task) against a plain single-process PIL loop over the same shards, in alternating
rounds of one run; peak memory at two sizes to show the Ray pipeline streams rather than
materialises; and where each one's time went.

    .venv/bin/python benchmarks/ingest.py --images 20000

Synthetic shards are generated once (re-encoded, jittered copies of the shipped sample)
and cached under --workdir.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import re
import resource
import tarfile
import threading
import time
from pathlib import Path

import numpy as np
from synthetic import PER_SHARD, generate

from biocap_ray.config import load_config
from biocap_ray.data.images import load_rgb
from biocap_ray.data.readers import read_records
from biocap_ray.runtime import local_options

SIZE = 224  # the side images are decoded and resized to, as for a ViT-B-16


def _tree_pss_mb(root: int) -> float:
    """Proportional set size of a process and all its descendants (shared pages split fairly)."""
    children: dict[int, list[int]] = {}
    for d in os.listdir("/proc"):
        if d.isdigit():
            try:
                ppid = int(open(f"/proc/{d}/stat").read().rsplit(")", 1)[1].split()[1])
            except OSError:
                continue
            children.setdefault(ppid, []).append(int(d))
    total, stack = 0, [root]
    while stack:
        pid = stack.pop()
        stack.extend(children.get(pid, []))
        try:
            for line in open(f"/proc/{pid}/smaps_rollup"):
                if line.startswith("Pss:"):
                    total += int(line.split()[1])
        except OSError:
            pass
    return total / 1024


def cpu_seconds() -> dict[str, float]:
    """CPU seconds so far of this process and Ray's own processes, and the machine's idle
    core-seconds. Task workers are left out: a worker Ray stops mid-run takes its CPU time with
    it, so what they used outside tasks is read as the rest, cores x time minus the others."""
    import psutil

    machine = psutil.cpu_times()
    used = {"driver": 0.0, "ray system": 0.0,
            "idle": machine.idle + getattr(machine, "iowait", 0.0)}
    for proc in psutil.process_iter(["cmdline"]):
        try:
            cmd, cpu = " ".join(proc.info["cmdline"] or []), proc.cpu_times()
        except (psutil.Error, OSError):
            continue
        if proc.pid == os.getpid():
            kind = "driver"
        elif cmd.startswith("ray::") and not any(a in cmd for a in ("Agent", "_StatsActor", "_Autoscaling")):
            continue  # task workers (named after their task, or IDLE)
        elif cmd.startswith("ray::") or "/ray/" in cmd:
            kind = "ray system"  # raylet, GCS, agents, Ray Data's stats and autoscaling actors
        else:
            continue
        used[kind] += cpu.user + cpu.system
    return used


class PeakMemory:
    """Samples the PSS of this process tree every 0.2 s in a thread."""

    def __enter__(self):
        self.peak, self._stop = 0.0, threading.Event()
        self._t = threading.Thread(target=self._run, daemon=True)
        self._t.start()
        return self

    def _run(self):
        while not self._stop.is_set():
            self.peak = max(self.peak, _tree_pss_mb(os.getpid()))
            time.sleep(0.2)

    def __exit__(self, *exc):
        self._stop.set()
        self._t.join()


def _decode_batch(batch: dict, size: int, max_pixels: int) -> dict:
    pixels = np.stack([np.asarray(load_rgb(b, max_pixels, size)) for b in batch["image"]])
    return {"uid": batch["uid"], "pixels": pixels}


def _seconds(value: str) -> float:
    number, unit = re.fullmatch(r"([0-9.]+)(us|ms|s|min)", value).groups()
    return float(number) * {"us": 1e-6, "ms": 1e-3, "s": 1.0, "min": 60.0}[unit]


def operator_seconds(stats: str) -> list[tuple[str, int, float, float]]:
    """(operator, tasks, CPU seconds, wall seconds) of each operator, from ``Dataset.stats()``."""
    rows = []
    for block in re.split(r"\n(?=Operator \d+ )", stats):
        head = re.match(r"Operator \d+ (.+?): (\d+) tasks executed", block)
        cpu = re.search(r"Remote cpu time: .* ([0-9.]+(?:us|ms|s|min)) total", block)
        wall = re.search(r"Remote wall time: .* ([0-9.]+(?:us|ms|s|min)) total", block)
        if head and cpu and wall:
            rows.append((head.group(1), int(head.group(2)), _seconds(cpu.group(1)), _seconds(wall.group(1))))
    return rows


def ray_pipeline(folder: Path, cfg, sample_memory: bool) -> tuple[int, float, float, float, list]:
    """The ingest as training runs it (``train.ingest``): shards read one task each, records
    parsed and decoded + resized in batches of ``data.batch_size`` in one fused operator,
    streamed to a consumer (here the driver) in batches of 256. Returns the images, seconds end
    to end, seconds from the first batch on (start-up excluded), peak memory (with
    ``sample_memory``: reading every process's page map takes about a tenth of 2 cores, so timed
    runs leave it off) and the operators' times."""
    ds = read_records(str(folder), cfg, "webdataset").map_batches(
        _decode_batch, fn_kwargs={"size": SIZE, "max_pixels": cfg.max_image_pixels},
        batch_size=cfg.batch_size, num_cpus=cfg.num_cpus_per_task, batch_format="numpy",
    )
    n, first = 0, None
    with PeakMemory() if sample_memory else contextlib.nullcontext() as mem:
        start = time.perf_counter()
        for batch in ds.iter_batches(batch_size=256, batch_format="numpy"):
            first = first or (time.perf_counter(), n)
            n += len(batch["uid"])
        end = time.perf_counter()
    steady = (end - first[0]) * n / (n - first[1])  # the time all n would take at the steady rate
    return n, end - start, steady, mem.peak if mem else float("nan"), operator_seconds(ds.stats())


def plain_loop(shards: list[Path], size: int, max_pixels: int, batch_size: int) -> tuple[int, float, float, list]:
    """One process: read each tar member, decode + resize, stack batches of ``batch_size`` arrays
    (the same output the pipeline hands on)."""
    n, read_s, decode_s, images = 0, 0.0, 0.0, []
    start = time.perf_counter()
    for shard in shards:
        with tarfile.open(shard) as tf:
            t0 = time.perf_counter()
            for member in tf:
                if member.name.endswith(".jpg"):
                    data = tf.extractfile(member).read()
                    t1 = time.perf_counter()
                    images.append(np.asarray(load_rgb(data, max_pixels, size)))
                    if len(images) == batch_size:
                        np.stack(images)
                        images = []
                    n += 1
                    t2 = time.perf_counter()
                    read_s, decode_s, t0 = read_s + t1 - t0, decode_s + t2 - t1, t2
    elapsed = time.perf_counter() - start
    stages = [("tar read", len(shards), read_s, read_s), ("decode + resize + stack", len(shards), decode_s, decode_s)]
    return n, elapsed, elapsed, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, stages


def _plain_share(args: tuple) -> int:
    return plain_loop(*args)[0]


def plain_processes(pool, shards: list[Path], processes: int, data) -> tuple[int, float]:
    """The plain loop in one process per core (``pool``'s), each over its share of the shards:
    what the cores deliver here with no orchestration at all (two busy cores can be slower each
    than one)."""
    shares = [(shards[i::processes], SIZE, data.max_image_pixels, data.batch_size) for i in range(processes)]
    start = time.perf_counter()
    n = sum(pool.map(_plain_share, shares))
    return n, time.perf_counter() - start


# Task sizes timed side by side: one CPU per task as the cluster preset, half as the local preset.
# Ray Data reserves for each operator at least one task's CPUs, so on 2 CPUs the 1-CPU read holds
# a CPU while it waits and one 1-CPU decode task runs at a time; at half a CPU three fit beside
# the read. On a 16-CPU node each of the two operators reserves 4 CPUs (half the CPUs, split
# between them) and the other 8 are shared, so 1-CPU tasks fill it.
TASK_CPUS = (1.0, 0.5)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=20000)
    parser.add_argument("--small", type=int, default=5000, help="smaller size for the flat-memory check")
    parser.add_argument("--rounds", type=int, default=2, help="timed runs of each plan, alternating")
    parser.add_argument("--workdir", default="/tmp/biocap_bench")
    args = parser.parse_args()

    from multiprocessing import get_context

    import ray

    local = load_config("local", ["data.batch_size=64"])
    cfgs = {c: local.data.model_copy(update={"num_cpus_per_task": c}) for c in TASK_CPUS}
    data = cfgs[1.0]
    shards = generate(Path(args.workdir) / f"synthetic-{args.images}", args.images)
    small = Path(args.workdir) / f"subset-{args.small}"
    small.mkdir(exist_ok=True)
    for shard in shards[: max(1, args.small // PER_SHARD)]:
        if not (small / shard.name).exists():
            (small / shard.name).symlink_to(shard)
    cores = local.ray.num_cpus or os.cpu_count()
    ray.init(**local_options(cores), include_dashboard=False, log_to_driver=False)  # as ``init_ray`` starts it
    ray.data.DataContext.get_current().enable_progress_bars = False

    peaks = []
    for folder in (small, shards[0].parent):
        n, _, _, peak, _ = ray_pipeline(folder, data, sample_memory=True)
        peaks.append((n, peak))
    # Alternating rounds in one Ray session: each plan, then the plain loop in one process and in
    # one per core, so that a change in the machine's load falls on all of them (these machines
    # are noisy)
    runs: dict[str, list] = {}
    pool = get_context("spawn").Pool(cores)
    for _ in range(args.rounds):
        for c in TASK_CPUS:
            before = cpu_seconds()
            n, t, steady, _, stages = ray_pipeline(shards[0].parent, cfgs[c], sample_memory=False)
            used = {k: v - before.get(k, 0.0) for k, v in cpu_seconds().items()}
            runs.setdefault(f"ray {c:g} cpu/task", []).append((n, t, steady, cores, stages, used))
        n, t, steady, _, stages = plain_loop(shards, SIZE, data.max_image_pixels, data.batch_size)
        runs.setdefault("plain PIL loop", []).append((n, t, steady, 1, stages, None))
        n, t = plain_processes(pool, shards, cores, data)
        runs.setdefault(f"plain x{cores} procs", []).append((n, t, t, cores, [], None))
    pool.close()
    ray.shutdown()

    def rate(run, steady=False):  # images/s per core
        n, t, s, c = run[:4]
        return n / (s if steady else t) / c

    print(f"\n{'pipeline':<18}{'images':>8}{'img/s/core per round':>24}{'mean':>7}{'steady':>8}")
    for name, rs in runs.items():
        per = [rate(r) for r in rs]
        print(f"{name:<18}{rs[0][0]:>8}{', '.join(f'{x:.0f}' for x in per):>24}{sum(per) / len(per):>7.0f}"
              f"{sum(rate(r, True) for r in rs) / len(rs):>8.0f}")
    plain, all_cores = runs["plain PIL loop"], runs[f"plain x{cores} procs"]
    for name, rs in runs.items():
        if name.startswith("ray"):
            ratios = [rate(r) / rate(p) for r, p in zip(rs, plain)]
            steady = [rate(r, True) / rate(p) for r, p in zip(rs, plain)]
            same_cores = [rate(r) / rate(p) for r, p in zip(rs, all_cores)]
            print(f"per-core ratio {name}, by round: to the plain loop {', '.join(f'{x:.2f}' for x in ratios)} end "
                  f"to end, {', '.join(f'{x:.2f}' for x in steady)} from the first batch on; to the plain loop in "
                  f"{cores} processes at once (the same {cores} cores busy) {', '.join(f'{x:.2f}' for x in same_cores)}")
    (n_small, peak_small), (n_big, peak_big) = peaks
    print(f"peak memory (separate runs, 1 cpu/task) {n_small} → {n_big} images: {peak_small:.0f} MB → {peak_big:.0f} MB "
          f"({peak_big / peak_small:.2f}x for {n_big / n_small:.0f}x the images)")
    print("\nwhere the time went (last round; ms per image, CPU and wall, summed over tasks)")
    print(f"{'run':<18}{'operator':<56}{'tasks':>6}{'cpu ms':>8}{'wall ms':>9}")
    for name, rs in runs.items():
        n = rs[-1][0]
        for op, tasks, cpu, wall in rs[-1][4]:
            print(f"{name:<18}{op[:55]:<56}{tasks:>6}{cpu / n * 1e3:>8.3f}{wall / n * 1e3:>9.3f}")
    for name, rs in runs.items():
        if not name.startswith("ray"):
            continue
        n, t, _, c, stages, used = rs[-1]
        tasks = sum(cpu for _, _, cpu, _ in stages)
        rest = c * t - tasks - used["driver"] - used["ray system"] - used["idle"]
        print(f"{name}: {c} cores x {t:.1f} s = {c * t / n * 1e3:.3f} core-ms per image: tasks {tasks / n * 1e3:.3f}, "
              f"driver (Ray Data's executor, batches) {used['driver'] / n * 1e3:.3f}, Ray's own processes "
              f"{used['ray system'] / n * 1e3:.3f}, idle cores {used['idle'] / n * 1e3:.3f}, the rest (Ray's "
              f"workers outside tasks, anything else on the machine) {rest / n * 1e3:.3f}")


if __name__ == "__main__":
    main()
