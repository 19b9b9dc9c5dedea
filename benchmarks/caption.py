"""Caption throughput: the Ray Data caption pipeline against a plain loop that calls the same
engine directly on the same images and model, in one run (transformers engine, and vLLM when
it is installed).

    .venv/bin/python benchmarks/caption.py --images 400

Both sides use one engine instance and the same batch size; the pipeline's figure is measured
from its first caption to its last (steady state) and also end to end (with Ray and engine start).
"""

from __future__ import annotations

import argparse
import csv
import os
import shutil
import tempfile
import time
from pathlib import Path

import pyarrow as pa

from biocap_ray.caption.prepare import prepare_batch
from biocap_ray.caption.run import build_setup, caption, engine_class
from biocap_ray.config import load_config
from biocap_ray.data import readers

REPO = Path(__file__).resolve().parents[1]
SAMPLE = REPO / "sample_data" / "species-sample"


def make_folder(root: Path, n: int) -> Path:
    rows = list(csv.DictReader(open(SAMPLE / "metadata.csv")))
    (root / "images").mkdir(parents=True)
    out = []
    for i in range(n):
        r = dict(rows[i % len(rows)])
        name = f"images/img{i:05d}.jpg"
        shutil.copy(SAMPLE / r["file"], root / name)
        out.append({**r, "file": name})
    with open(root / "metadata.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(out[0]))
        w.writeheader()
        w.writerows(out)
    return root


def records_table(folder: Path, cfg) -> pa.Table:
    return pa.Table.from_pylist(readers.read_records(str(folder), cfg.data).take_all())


def direct(table: pa.Table, cfg) -> float:
    """The engine actor class called in a plain loop: prepare a batch, generate, repeat."""
    c = cfg.caption
    os.environ.update(c.engine_env)  # e.g. the CPU backend's KV-cache size, as the pipeline's actors get it
    setup = build_setup(cfg)
    engine = engine_class(c.engine)(setup, c)
    start = time.perf_counter()
    for i in range(0, table.num_rows, c.batch_size):
        engine(prepare_batch(table.slice(i, c.batch_size), setup)["prepared"])
    rate = table.num_rows / (time.perf_counter() - start)
    engine.unload()
    return rate


def pipeline(folder: Path, cfg) -> tuple[float, float | None, float | None]:
    """(end-to-end images/s, steady-state images/s from the first caption batch to the last,
    prefix-cache hit rate)."""
    dst = Path(tempfile.mkdtemp(prefix="bench-captions-"))
    summary = caption(str(folder), str(dst), cfg)
    shutil.rmtree(dst)
    return summary["images_per_s"], summary["steady_images_per_s"], summary["prefix_cache_hit_rate"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=400)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--engines", default="transformers,vllm")
    args = parser.parse_args()

    import ray

    workdir = Path(tempfile.mkdtemp(prefix="bench-caption-"))
    folder = make_folder(workdir / "data", args.images)
    rows = []
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    for engine in args.engines.split(","):
        if engine == "vllm":
            try:
                import vllm  # noqa: F401
            except ImportError:
                print("vllm not installed: skipping its rows")
                continue
        cfg = load_config("local", [f"caption.engine={engine}", f"caption.batch_size={args.batch_size}",
                                    "caption.rows_per_file=16", "caption.max_attempts=1"])
        table = records_table(folder, cfg)
        direct_rate = direct(table, cfg)
        end_to_end, steady, hits = pipeline(folder, cfg)
        rows.append((engine, args.images, direct_rate, end_to_end, steady, hits))
        print(f"{engine}: direct {direct_rate:.2f} img/s, pipeline {end_to_end:.2f} img/s end to end, "
              f"{steady or 0:.2f} steady", flush=True)
    ray.shutdown()
    shutil.rmtree(workdir)

    print(f"\n{'engine':<13}{'images':>7}{'direct img/s':>14}{'pipeline img/s':>16}{'steady img/s':>14}{'ratio':>7}"
          f"{'prefix-cache hits':>19}")
    for engine, n, base, e2e, steady, hits in rows:
        ratio = (steady or e2e) / base
        shown = f"{hits:.1%}" if hits is not None else "-"
        print(f"{engine:<13}{n:>7}{base:>14.2f}{e2e:>16.2f}{(steady or 0):>14.2f}{ratio:>7.2f}{shown:>19}")
    print("\nratio = pipeline steady-state images/s ÷ direct loop images/s (same engine, model, images, batch)")


if __name__ == "__main__":
    main()
