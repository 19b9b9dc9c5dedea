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

from biocap_ray.caption.prepare import prepare_batch, resolve_model
from biocap_ray.caption.run import build_setup, caption
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


def direct_transformers(table: pa.Table, cfg) -> float:
    from biocap_ray.caption.transformers_engine import TransformersCaptioner

    setup = build_setup(cfg)
    engine = TransformersCaptioner(setup, cfg.caption.sampling.model_dump(), cfg.caption.dtype)
    bs = cfg.caption.batch_size
    start = time.perf_counter()
    for i in range(0, table.num_rows, bs):
        prepared = prepare_batch(table.slice(i, bs), setup)["prepared"]
        engine(prepared)
    return table.num_rows / (time.perf_counter() - start)


def direct_vllm(table: pa.Table, cfg) -> float:
    import numpy as np
    from PIL import Image
    from vllm import LLM, SamplingParams

    c = cfg.caption
    os.environ.update(c.engine_env)  # e.g. the CPU backend's KV-cache size, as the pipeline's actors get it
    setup = build_setup(cfg)
    llm = LLM(model=resolve_model(c.model), max_model_len=c.max_model_len, dtype=c.dtype,
              max_num_seqs=c.batch_size, enable_prefix_caching=c.enable_prefix_caching,
              limit_mm_per_prompt={"image": 1})
    params = SamplingParams(temperature=c.sampling.temperature, top_p=c.sampling.top_p,
                            max_tokens=c.sampling.max_tokens)
    bs = c.batch_size
    start = time.perf_counter()
    for i in range(0, table.num_rows, bs):
        p = prepare_batch(table.slice(i, bs), setup)["prepared"]
        requests = [{"prompt": pr, "multi_modal_data": {"image": Image.fromarray(np.asarray(px, dtype=np.uint8))}}
                    for pr, px in zip(p["prompt"], p["pixels"])]
        llm.generate(requests, params, use_tqdm=False)
    rate = table.num_rows / (time.perf_counter() - start)
    del llm
    return rate


def pipeline(folder: Path, cfg) -> tuple[float, float | None]:
    """(end-to-end images/s, steady-state images/s from the first caption batch to the last)."""
    dst = Path(tempfile.mkdtemp(prefix="bench-captions-"))
    summary = caption(str(folder), str(dst), cfg)
    shutil.rmtree(dst)
    return summary["images_per_s"], summary["steady_images_per_s"]


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
        direct = direct_vllm(table, cfg) if engine == "vllm" else direct_transformers(table, cfg)
        end_to_end, steady = pipeline(folder, cfg)
        rows.append((engine, args.images, direct, end_to_end, steady))
        print(f"{engine}: direct {direct:.2f} img/s, pipeline {end_to_end:.2f} img/s end to end, "
              f"{steady or 0:.2f} steady", flush=True)
    ray.shutdown()
    shutil.rmtree(workdir)

    print(f"\n{'engine':<13}{'images':>7}{'direct img/s':>14}{'pipeline img/s':>16}{'steady img/s':>14}{'ratio':>7}")
    for engine, n, direct, e2e, steady in rows:
        ratio = (steady or e2e) / direct
        print(f"{engine:<13}{n:>7}{direct:>14.2f}{e2e:>16.2f}{(steady or 0):>14.2f}{ratio:>7.2f}")
    print("\nratio = pipeline steady-state images/s ÷ direct loop images/s (same engine, model, images, batch)")


if __name__ == "__main__":
    main()
