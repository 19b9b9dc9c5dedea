"""The caption job: dataset → prompts → engine → quality checks → Parquet parts, resumable.

Stages (each a Ray Data operator, streaming):
  read records → skip uids already captioned → prepare (decode, bound, context, chat template)
  → engine (vLLM or transformers, one engine per actor of a Ray Data pool) → the driver writes
  complete Parquet parts of ``rows_per_file`` captions and shows images/s, tokens/s and ETA.
With ``qc_action=retry`` the captions that fail QC are generated again (new seed) in
``retry-N/`` folders; ``outputs.read_captions`` keeps the first passing attempt per uid.
"""

from __future__ import annotations

import logging
import time
from collections import Counter

import pyarrow as pa
import pyarrow.csv as pacsv

from biocap_ray import storage
from biocap_ray.caption import outputs
from biocap_ray.caption.engine import engine_class
from biocap_ray.caption.prepare import CaptionSetup, error_row, prepare_batch
from biocap_ray.caption.prompts import PromptTemplate
from biocap_ray.caption.quality import QC_FLAGS, NameIndex, QualityRules
from biocap_ray.config import Config
from biocap_ray.context.lookup import ContextLookup
from biocap_ray.context.table import read_context
from biocap_ray.data import readers

log = logging.getLogger(__name__)


def _run_names(cfg: Config) -> NameIndex:
    """Names that count as 'another taxon': the context table's taxa and an optional taxonomy CSV."""
    names: set[str] = set()
    c = cfg.caption
    if c.context_uri:
        table = read_context(c.context_uri)
        for col in ("scientific_name", "common_name"):
            names.update(v for v in table.column(col).to_pylist() if v)
    if c.taxonomy_uri:
        fs, path = storage.resolve(c.taxonomy_uri)
        with fs.open_input_stream(path) as f:
            rows = pacsv.read_csv(f).to_pylist()
        for r in rows:
            if r.get("genus") and r.get("species"):
                names.add(f"{r['genus']} {r['species']}")
            if r.get("common_name"):
                names.add(str(r["common_name"]))
    return NameIndex(names)


def build_setup(cfg: Config, attempt: int = 0) -> CaptionSetup:
    c = cfg.caption
    if not c.model:
        raise ValueError("caption.model is empty: set it to a model folder, an s3:// folder or a hub id")
    return CaptionSetup(
        model=c.model,
        engine=c.engine,
        template=PromptTemplate.load(c.prompt),
        lookup=ContextLookup.load(c.context_uri, cfg.context.format_examples_uri),
        names=_run_names(cfg),
        image_size=c.image_size,
        rules=QualityRules(max_words=c.max_words, copy_threshold=c.copy_threshold),
        max_pixels=cfg.data.max_image_pixels,
        attempt=attempt,
        seed=c.sampling.seed,
    )


def _select(batch: pa.Table, skip: set[str] | None, only: set[str] | None) -> pa.Table:
    uids = batch.column("uid").to_pylist()
    keep = [(only is None or u in only) and (skip is None or u not in skip) for u in uids]
    return batch.filter(pa.array(keep, pa.bool_()))


def _prepare_udf(batch: pa.Table, setup: CaptionSetup, folder: str) -> dict:
    """Prepare a batch; its unusable records are written straight away as error rows."""
    result = prepare_batch(batch, setup)
    if result["errors"]:
        rows = [error_row(e["uid"], e["error"], setup) for e in result["errors"]]
        outputs.write_part(pa.Table.from_pylist(rows, schema=outputs.OUTPUT_SCHEMA), folder, prefix="part-err")
    return result["prepared"]


def _engine_stage(prepared, cfg: Config, setup: CaptionSetup):
    """The engine as a Ray Data actor pool: one engine per actor, GPUs and restarts per the config."""
    from ray.data import ActorPoolStrategy

    c = cfg.caption
    low, high = (c.concurrency, c.concurrency) if isinstance(c.concurrency, int) else c.concurrency
    return prepared.map_batches(
        engine_class(c.engine),
        fn_constructor_kwargs={"setup": setup, "cfg": c},
        compute=ActorPoolStrategy(min_size=low, max_size=high),
        batch_size=c.batch_size,
        num_cpus=c.num_cpus_per_engine,
        num_gpus=c.num_gpus_per_engine * c.tensor_parallel_size,
        accelerator_type=c.accelerator_type,
        max_restarts=c.engine_max_restarts,
        max_task_retries=c.engine_max_restarts,
        runtime_env={"env_vars": c.engine_env} if c.engine_env else None,
    )


class _Progress:
    """Live images/s, tokens/s and ETA (a tqdm bar on a terminal, log lines in job logs)."""

    def __init__(self, total: int | None, label: str):
        from tqdm import tqdm

        self.bar = tqdm(total=total, unit="img", desc=label, mininterval=2.0)
        self.start, self.images, self.tokens = time.perf_counter(), 0, 0
        self.first_at = self.last_at = None  # steady state: from the first caption batch to the last
        self.after_first = 0

    def update(self, rows: pa.Table) -> None:
        n = rows.num_rows
        now = time.perf_counter()
        if self.first_at is None:
            self.first_at = now
        else:
            self.after_first += n
        self.last_at = now
        toks = rows.column("output_tokens").to_pylist()
        self.images += n
        self.tokens += sum(t for t in toks if t)
        elapsed = max(time.perf_counter() - self.start, 1e-9)
        self.bar.set_postfix(img_s=f"{self.images / elapsed:.2f}", tok_s=f"{self.tokens / elapsed:.1f}")
        self.bar.update(n)

    def close(self) -> float:
        self.bar.close()
        return time.perf_counter() - self.start

    def steady_rate(self) -> float | None:
        """Images/s once the engine is producing (engine start-up excluded)."""
        if self.first_at is None or self.last_at == self.first_at:
            return None
        return self.after_first / (self.last_at - self.first_at)


def _stream(out_ds, folder: str, rows_per_file: int, progress: _Progress) -> int:
    pending: list[pa.Table] = []
    count, written = 0, 0
    for batch in out_ds.iter_batches(batch_format="pyarrow", batch_size=None):
        if batch.num_rows == 0:
            continue
        batch = batch.select(outputs.OUTPUT_SCHEMA.names).cast(outputs.OUTPUT_SCHEMA)
        pending.append(batch)
        count += batch.num_rows
        progress.update(batch)
        while count >= rows_per_file:
            table = pa.concat_tables(pending)
            outputs.write_part(table.slice(0, rows_per_file), folder)
            rest = table.slice(rows_per_file)
            pending, count = ([rest] if rest.num_rows else []), rest.num_rows
            written += rows_per_file
    if count:
        outputs.write_part(pa.concat_tables(pending), folder)
        written += count
    return written


def summarize(table: pa.Table) -> dict:
    """Counts, QC pass rate per check, context coverage and prefix-cache hits over the final captions."""
    rows = table.to_pylist()
    ok = [r for r in rows if not r["error"]]
    cached = [(r["cached_tokens"], r["input_tokens"]) for r in ok if r["cached_tokens"] is not None]
    qc = {f: sum(1 for r in ok if r[f]) for f in QC_FLAGS}
    return {
        "images": len(rows),
        "captioned": len(ok),
        "errors": len(rows) - len(ok),
        "qc_pass": sum(1 for r in ok if r["qc_pass"]),
        "qc_pass_rate": round(sum(1 for r in ok if r["qc_pass"]) / len(ok), 4) if ok else 0.0,
        "qc_failures": qc,
        "context_levels": dict(Counter(r["context_level"] or "none" for r in ok)),
        "examples_levels": dict(Counter(r["examples_level"] or "none" for r in ok)),
        # prompt tokens the engine served from its prefix cache (vLLM only)
        "prefix_cache_hit_rate": round(sum(c for c, _ in cached) / max(1, sum(n for _, n in cached)), 4)
        if cached else None,
        "output_tokens": sum(r["output_tokens"] or 0 for r in ok),
        "error_examples": [{"uid": r["uid"], "error": r["error"]} for r in rows if r["error"]][:5],
    }


def caption(src: str, dst: str, cfg: Config, src_format: str | None = None) -> dict:
    """Caption every record of ``src`` into ``dst``; rerunning resumes where it stopped."""
    c = cfg.caption
    fmt = src_format or readers.detect_format(src)
    total_in = readers.count_records(src, fmt)
    timing = {"images": 0, "seconds": 0.0, "steady": None}
    only: set[str] | None = None
    for attempt in range(c.max_attempts if c.qc_action == "retry" else 1):
        folder = outputs.attempt_dir(dst, attempt)
        setup = build_setup(cfg, attempt)
        skip = outputs.done_uids(dst, attempt)
        todo = None if total_in is None else (len(only) if only is not None else total_in) - len(skip)
        if todo == 0 or (only is not None and not only - skip):
            log.info("caption attempt %d: nothing left to do", attempt)
        else:
            log.info("caption attempt %d: %s images to do (%d done before)", attempt, todo or "?", len(skip))
            ds = readers.read_records(src, cfg.data, fmt)
            kw = {"batch_format": "pyarrow", "num_cpus": c.num_cpus_per_task, "batch_size": c.batch_size}
            ds = ds.map_batches(_select, fn_kwargs={"skip": skip, "only": only}, **kw)
            prepared = ds.map_batches(_prepare_udf, fn_kwargs={"setup": setup, "folder": folder}, **kw)
            progress = _Progress(todo, f"caption[{attempt}]")
            timing["images"] += _stream(_engine_stage(prepared, cfg, setup), folder, c.rows_per_file, progress)
            timing["seconds"] += progress.close()
            timing["steady"] = timing["steady"] or progress.steady_rate()
        if c.qc_action != "retry":
            break
        final = outputs.read_captions(dst)
        only = {r["uid"] for r in final.to_pylist() if not r["error"] and not r["qc_pass"]}
        if not only:
            break
    summary = summarize(outputs.read_captions(dst))
    engines = c.concurrency if isinstance(c.concurrency, int) else c.concurrency[1]
    gpus = engines * c.num_gpus_per_engine * c.tensor_parallel_size
    rate = timing["images"] / timing["seconds"] if timing["seconds"] else 0.0
    summary.update({
        "destination": storage.redact(dst),
        "this_run_images": timing["images"],
        "this_run_seconds": round(timing["seconds"], 1),
        "images_per_s": round(rate, 3),
        "steady_images_per_s": round(timing["steady"], 3) if timing["steady"] else None,
        "gpu_hours_per_million_images": round(gpus * 1e6 / rate / 3600, 2) if rate and gpus else None,
        "engine_hours_per_million_images": round(engines * 1e6 / rate / 3600, 2) if rate else None,
    })
    if c.qc_action == "drop":
        summary["dropped_by_qc"] = summary["captioned"] - summary["qc_pass"]
    log.info("caption summary: %s", summary)
    return summary

