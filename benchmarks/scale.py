"""Scale benchmark: N synthetic records through ingest -> caption -> merge -> the training ingest
(a TorchTrainer whose worker iterates its data and trains nothing), on local Ray, to show that the driver and the workers hold nothing that grows with N.

    .venv/bin/python benchmarks/scale.py --n 100000 --n 1000000

Each N runs in a fresh process (its own local Ray). Per stage it prints rows/s, the driver's
peak RSS and peak private memory (RSS less shared pages: a consumer's RSS also counts the
object-store pages it maps zero-copy), the largest private memory of any Ray worker process
while the stage ran (overall and in each quarter of the stage, to show where it plateaus), and the largest payload shipped with a task (each Ray Data operator's
function and its arguments, pickled). Records are tiny JPEGs over many taxa, written as Parquet.

The caption step uses CANNED CAPTIONS from an engine defined here (it returns a fixed sentence
at once): it measures the pipeline's orchestration (reading, skipping done uids, prompts, QC,
writing parts, summaries), not a model. Everything else is the production code path.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import psutil

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

TAXA = 20_000  # species over 200 classes, 40 orders, ...
FILE_ROWS = 20_000
COLUMNS = ("uid", "image", "kingdom", "phylum", "class", "order", "family", "genus", "species", "common_name")


def synthetic_parquet(out: Path, n: int) -> Path:
    """``n`` records of 8x8 JPEGs (a few distinct ones) over ``TAXA`` species, as Parquet files."""
    import pyarrow as pa
    import pyarrow.parquet as pq
    from PIL import Image

    done = out / "_done"
    if done.exists():
        return out
    out.mkdir(parents=True, exist_ok=True)
    jpegs = []
    for c in range(16):
        buf = io.BytesIO()
        Image.new("RGB", (8, 8), (16 * c, 255 - 16 * c, 90)).save(buf, format="JPEG")
        jpegs.append(buf.getvalue())
    for start in range(0, n, FILE_ROWS):
        ids = range(start, min(n, start + FILE_ROWS))
        sp = [i % TAXA for i in ids]
        pq.write_table(pa.table({
            "uid": [f"rec{i:08d}" for i in ids],
            "image": [jpegs[i % 16] for i in ids],
            "kingdom": ["Animalia"] * len(sp),
            "phylum": [f"Phylum{s % 8}" for s in sp],
            "class": [f"Class{s % 200}" for s in sp],
            "order": [f"Order{s % 1000}" for s in sp],
            "family": [f"Family{s % 4000}" for s in sp],
            "genus": [f"Genus{s % 10000}" for s in sp],
            "species": [f"species{s}" for s in sp],
            "common_name": [f"common {s}" for s in sp],
        }), out / f"part-{start // FILE_ROWS:05d}.parquet",
            # photos do not compress: neither may these few repeated JPEGs (Ray sizes read tasks
            # by bytes on disk, so a 40x-compressed file would make one task read 40x the rows)
            use_dictionary=[c for c in COLUMNS if c != "image"], compression={c: "none" if c == "image" else "snappy" for c in COLUMNS})
    done.touch()
    return out


class _Watch:
    """Samples the driver's RSS and the private memory of every Ray worker process."""

    def __init__(self):
        self.driver = psutil.Process()
        self.driver_peak = self.driver_private_peak = self.worker_peak = 0
        self.worker_name = ""  # what the largest worker was running (its process title)
        self.samples: list[tuple[float, int]] = []  # (time, largest worker private memory then)
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self):
        while not self.stop.wait(0.2):
            m = self.driver.memory_info()
            largest = 0
            self.driver_peak = max(self.driver_peak, m.rss)
            # RSS counts object-store pages a consumer maps zero-copy; private memory does not
            self.driver_private_peak = max(self.driver_private_peak, m.rss - m.shared)
            for p in psutil.process_iter(["cmdline"]):
                try:
                    cmd = " ".join(p.info["cmdline"] or [])
                    if cmd.startswith("ray::") or "default_worker.py" in cmd:
                        m = p.memory_info()
                        largest = max(largest, m.rss - m.shared)
                        if m.rss - m.shared > self.worker_peak:
                            self.worker_peak, self.worker_name = m.rss - m.shared, cmd.split(" ")[0][:60]
                except (psutil.NoSuchProcess, psutil.AccessDenied):
                    continue
            self.samples.append((time.monotonic(), largest))

    def quarters(self) -> list[int]:
        """The largest worker's private MB in each quarter of the stage: flat memory plateaus early."""
        if not self.samples:
            return [0] * 4
        t0, t1 = self.samples[0][0], self.samples[-1][0]
        peaks = [0] * 4
        for t, mem in self.samples:
            q = min(3, int(4 * (t - t0) / max(t1 - t0, 1e-9)))
            peaks[q] = max(peaks[q], mem)
        return [round(b / 2**20) for b in peaks]

    def close(self) -> tuple[float, float, float]:
        self.stop.set()
        self.thread.join()
        return self.driver_peak / 2**20, self.driver_private_peak / 2**20, self.worker_peak / 2**20


_PAYLOADS: list[int] = []


def _measure_payloads() -> None:
    """Record the pickled size of what every Ray Data operator ships with its tasks."""
    import ray.cloudpickle
    import ray.data

    original = ray.data.Dataset.map_batches

    def map_batches(self, fn, *args, **kwargs):
        shipped = (fn, kwargs.get("fn_args"), kwargs.get("fn_kwargs"), kwargs.get("fn_constructor_args"),
                   kwargs.get("fn_constructor_kwargs"))
        _PAYLOADS.append(len(ray.cloudpickle.dumps(shipped)))
        return original(self, fn, *args, **kwargs)

    ray.data.Dataset.map_batches = map_batches


def run_one(n: int, work: Path) -> dict:
    import ray

    from biocap_ray.caption import run as caption_run
    from biocap_ray.caption.engine import EngineActor, Generation
    from biocap_ray.caption.merge import merge_captions
    from biocap_ray.config import load_config
    from biocap_ray.data.ops import convert
    from biocap_ray.train.ingest import batch_options, training_dataset
    from biocap_ray.train.order import plan, unit_counts

    class CannedCaptioner(EngineActor):
        """Canned captions, instantly: no model (benchmark orchestration only)."""

        def load(self) -> None:
            pass

        def generate(self, prompts, images, seed):
            return [Generation("A small animal with brown fur on a rock.", len(p) // 4, 9) for p in prompts]

    caption_run.engine_class = lambda name: CannedCaptioner
    _measure_payloads()
    src = synthetic_parquet(work / f"input-{n}", n)
    cfg = load_config("local", [
        "data.batch_size=1000", "data.samples_per_shard=10000", "data.num_cpus_per_task=0.5",
        "caption.engine=transformers", "caption.batch_size=500", "caption.rows_per_file=20000",
        "caption.num_cpus_per_engine=0.5", "caption.num_cpus_per_task=0.5", "caption.image_size=28",
        "train.batch_size=500", "train.val_fraction=0", "train.data_actors=1", "train.shuffle_buffer=2000",
    ])
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    ray.data.DataContext.get_current().enable_progress_bars = False
    out = work / f"run-{n}"
    shutil.rmtree(out, ignore_errors=True)  # every stage from scratch
    stages = []

    def stage(name: str, fn) -> None:
        _PAYLOADS.clear()
        watch = _Watch()
        start = time.perf_counter()
        rows = fn()
        seconds = time.perf_counter() - start
        driver, driver_private, worker = watch.close()
        stages.append({"stage": name, "rows": rows, "seconds": round(seconds, 1), "rows_per_s": round(rows / seconds),
                       "driver_peak_mb": round(driver), "driver_private_mb": round(driver_private),
                       "worker_peak_mb": round(worker), "worker_peak_in": watch.worker_name,
                       "worker_mb_by_quarter": watch.quarters(),
                       "largest_payload_kb": round(max(_PAYLOADS, default=0) / 1024, 1)})
        print(json.dumps(stages[-1]), file=sys.stderr, flush=True)

    stage("ingest", lambda: convert(str(src), str(out / "shards"), cfg.data, to="webdataset")["records"])
    stage("caption (canned)", lambda: caption_run.caption(str(out / "shards"), str(out / "captions"), cfg)["images"])
    stage("merge", lambda: merge_captions(str(out / "shards"), str(out / "captions"), str(out / "merged"),
                                          cfg)["records"])

    def training_ingest() -> int:
        """The training run's own ingest: a TorchTrainer whose one worker only iterates its shard."""
        from ray.train import RunConfig, ScalingConfig
        from ray.train.torch import TorchTrainer

        from biocap_ray.data.pacing import paced

        _, counts = unit_counts(str(out / "merged"), cfg, str(out / "train"))
        order, _ = plan(counts, seed=0, epochs=1, skip_records=0)

        def data_only(config):
            import ray.train

            rows = 0
            for batch in ray.train.get_dataset_shard("train").iter_batches(
                    batch_format="numpy", **batch_options(cfg.train, rank=0, start_step=0)):
                rows += len(batch["has_caption"])
            with tempfile.TemporaryDirectory() as d:  # a Ray Train result keeps metrics sent with a checkpoint
                ray.train.report({"rows": rows}, checkpoint=ray.train.Checkpoint.from_directory(d))

        result = TorchTrainer(
            data_only, scaling_config=ScalingConfig(num_workers=1, resources_per_worker={"CPU": 0.5}),
            run_config=RunConfig(name="data-only", storage_path=str(out / "train")),
            datasets={"train": paced(training_dataset(str(out / "merged"), cfg, order))},
        ).fit()
        return result.metrics["rows"]

    stage("training ingest", training_ingest)
    ray.shutdown()
    return {"n": n, "stages": stages}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n", type=int, action="append", help="records (repeat for several sizes)")
    parser.add_argument("--work", default=os.path.join(tempfile.gettempdir(), "biocap-scale"))
    parser.add_argument("--one", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    work = Path(args.work)
    if args.one:
        print(json.dumps(run_one(args.one, work)))
        return
    results = []
    for n in args.n or [100_000, 1_000_000]:
        done = subprocess.run([sys.executable, __file__, "--one", str(n), "--work", str(work)],
                              stdout=subprocess.PIPE, text=True, check=True)
        results.append(json.loads(done.stdout.strip().splitlines()[-1]))
    print("caption engine: canned captions defined in benchmarks/scale.py (orchestration, not a model)")
    print(f"{'stage':<17} {'N':>9} {'rows/s':>8} {'driver RSS MB':>14} {'driver private MB':>18}"
          f" {'worker private MB':>18} {'... by quarter of the stage':>28} {'largest payload KB':>19}")
    for r in results:
        for s in r["stages"]:
            print(f"{s['stage']:<17} {r['n']:>9} {s['rows_per_s']:>8} {s['driver_peak_mb']:>14}"
                  f" {s['driver_private_mb']:>18} {s['worker_peak_mb']:>18}"
                  f" {'/'.join(map(str, s['worker_mb_by_quarter'])):>28} {s['largest_payload_kb']:>19}")
    if len(results) > 1:
        small, big = results[0], results[-1]
        print(f"\n{small['n']} -> {big['n']} records")
        for a, b in zip(small["stages"], big["stages"]):
            print(f"  {a['stage']:<17} per-row time x{a['rows_per_s'] / b['rows_per_s']:.2f},"
                  f" driver RSS {b['driver_peak_mb'] - a['driver_peak_mb']:+d} MB,"
                  f" driver private {b['driver_private_mb'] - a['driver_private_mb']:+d} MB,"
                  f" worker peak {b['worker_peak_mb'] - a['worker_peak_mb']:+d} MB")


if __name__ == "__main__":
    main()
