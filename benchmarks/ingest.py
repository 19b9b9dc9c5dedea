"""Ingest throughput: Ray Data (read shards → decode → resize to 224 px) against a plain
single-process PIL loop over the same shards, in one run; plus peak memory at two sizes
to show the Ray pipeline streams rather than materialises.

    .venv/bin/python benchmarks/ingest.py --images 20000

Synthetic shards are generated once (re-encoded, jittered copies of the shipped sample)
and cached under --workdir.
"""

from __future__ import annotations

import argparse
import os
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


def ray_pipeline(folder: Path, cfg) -> tuple[int, float, float]:
    ds = read_records(str(folder), cfg, "webdataset").select_columns(["uid", "image"])
    ds = ds.map_batches(
        _decode_batch, fn_kwargs={"size": SIZE, "max_pixels": cfg.max_image_pixels},
        batch_size=cfg.batch_size, num_cpus=cfg.num_cpus_per_task, batch_format="numpy",
    )
    n = 0
    with PeakMemory() as mem:
        start = time.perf_counter()
        for batch in ds.iter_batches(batch_size=256, batch_format="numpy"):
            n += len(batch["uid"])
        elapsed = time.perf_counter() - start
    return n, elapsed, mem.peak


def plain_loop(shards: list[Path], size: int, max_pixels: int) -> tuple[int, float, float]:
    n = 0
    start = time.perf_counter()
    for shard in shards:
        with tarfile.open(shard) as tf:
            for member in tf:
                if member.name.endswith(".jpg"):
                    load_rgb(tf.extractfile(member).read(), max_pixels, size)
                    n += 1
    elapsed = time.perf_counter() - start
    return n, elapsed, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=20000)
    parser.add_argument("--small", type=int, default=5000, help="smaller size for the flat-memory check")
    parser.add_argument("--workdir", default="/tmp/biocap_bench")
    args = parser.parse_args()

    import ray

    cfg = load_config("local", ["data.batch_size=64"])
    shards = generate(Path(args.workdir) / f"synthetic-{args.images}", args.images)
    small = Path(args.workdir) / f"subset-{args.small}"
    small.mkdir(exist_ok=True)
    for shard in shards[: max(1, args.small // PER_SHARD)]:
        if not (small / shard.name).exists():
            (small / shard.name).symlink_to(shard)
    cores = cfg.ray.num_cpus or os.cpu_count()
    ray.init(num_cpus=cores, include_dashboard=False, log_to_driver=False)
    ray.data.DataContext.get_current().enable_progress_bars = False

    rows = []
    n, t, peak = ray_pipeline(small, cfg.data)
    rows.append(("ray data", n, t, cores, peak))
    n, t, peak = ray_pipeline(shards[0].parent, cfg.data)
    rows.append(("ray data", n, t, cores, peak))
    ray.shutdown()
    n, t, peak = plain_loop(shards, SIZE, cfg.data.max_image_pixels)
    rows.append(("plain PIL loop", n, t, 1, peak))

    print(f"\n{'pipeline':<16}{'images':>8}{'seconds':>9}{'img/s':>8}{'cores':>6}{'img/s/core':>11}{'peak MB':>9}")
    for name, n, t, c, peak in rows:
        print(f"{name:<16}{n:>8}{t:>9.1f}{n / t:>8.1f}{c:>6}{n / t / c:>11.1f}{peak:>9.0f}")
    ray_big, plain = rows[1], rows[2]
    ratio = (ray_big[1] / ray_big[2] / ray_big[3]) / (plain[1] / plain[2] / plain[3])
    print(f"\nper-core throughput ratio ray/plain: {ratio:.2f}")
    print(f"peak memory {rows[0][1]} → {rows[1][1]} images: {rows[0][4]:.0f} MB → {rows[1][4]:.0f} MB "
          f"({rows[1][4] / rows[0][4]:.2f}x for {rows[1][1] / rows[0][1]:.0f}x the images)")


if __name__ == "__main__":
    main()
