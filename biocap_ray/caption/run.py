"""The caption job: dataset → prompts → engine → quality checks → Parquet parts, resumable.

Stages (each a Ray Data operator, streaming):
  read records → skip uids already captioned → prepare (decode, bound, context, chat template)
  → engine (vLLM or transformers, one engine per actor of a Ray Data pool; with
  ``qc_action=retry`` failing captions are regenerated there) → write tasks store complete
  Parquet parts of ``rows_per_file`` captions; the driver shows images/s, tokens/s and ETA.
"""

from __future__ import annotations

import logging
import time

import pyarrow as pa
import pyarrow.compute as pc

from biocap_ray import storage
from biocap_ray.caption import outputs, page
from biocap_ray.caption.engine import EngineActor
from biocap_ray.caption.families import family_of
from biocap_ray.caption.ledger import start_ledger
from biocap_ray.caption.prepare import CaptionSetup, prepare_batch
from biocap_ray.caption.prompts import PromptTemplate
from biocap_ray.caption.quality import QC_FLAGS, NameIndex, QualityRules
from biocap_ray.caption.rows import error_row
from biocap_ray.config import CaptionConfig, Config
from biocap_ray.context.lookup import ContextLookup
from biocap_ray.context.table import read_context
from biocap_ray.data import readers, uid_set
from biocap_ray.data.ops import value_counts
from biocap_ray.data.taxonomy import read_taxon_list
from biocap_ray.runtime import interactive

log = logging.getLogger(__name__)


def _run_names(c: CaptionConfig) -> NameIndex:
    """Names that count as 'another taxon': the context table's taxa and an optional taxonomy CSV."""
    names: set[str] = set()
    if c.context_uri:
        table = read_context(c.context_uri)
        for col in ("scientific_name", "common_name"):
            names.update(v for v in table.column(col).to_pylist() if v)
    if c.taxonomy_uri:
        for r in read_taxon_list(c.taxonomy_uri):
            if r.get("genus") and r.get("species"):
                names.add(f"{r['genus']} {r['species']}")
            if r.get("common_name"):
                names.add(str(r["common_name"]))
    return NameIndex(names)


def build_setup(cfg: Config) -> CaptionSetup:
    c = cfg.caption
    if not c.model:
        raise ValueError("caption.model is empty: set it to a model folder, an s3:// folder or a hub id")
    return CaptionSetup(
        model=c.model,
        engine=c.engine,
        template=PromptTemplate.load(c.prompt),
        lookup=ContextLookup.load(c.context_uri, cfg.context.format_examples_uri),
        names=_run_names(c),
        image_size=c.image_size,
        rules=QualityRules(max_words=c.max_words, copy_threshold=c.copy_threshold),
        max_pixels=cfg.data.max_image_pixels,
        family=family_of(c.model),
        seed=c.sampling.seed,
    )


def _prepare_udf(batch: pa.Table, setup: CaptionSetup, folder: str, page_rate: float) -> dict:
    """Prepare a batch; its unusable records are written straight away as error rows, and its
    records sampled for the captions page are kept with what went into their prompts."""
    result = prepare_batch(batch, setup)
    if result["errors"]:
        rows = [error_row(e["uid"], e["error"], setup) for e in result["errors"]]
        outputs.write_part(pa.Table.from_pylist(rows, schema=outputs.OUTPUT_SCHEMA), folder, prefix="part-err")
    if page_rate:
        page.keep_samples(batch, result["prepared"], setup, folder, page_rate)
    return result["prepared"]


def _write_udf(batch: pa.Table, folder: str) -> pa.Table:
    """Write one complete part of caption rows (a Ray task); only its counts go back to the driver."""
    outputs.write_part(batch, folder)
    tokens = pc.sum(batch.column("output_tokens")).as_py() or 0
    texted = pc.and_(pc.is_valid(batch.column("context_level")), pc.is_null(batch.column("error")))
    return pa.table({"rows": [batch.num_rows], "output_tokens": [tokens],
                     "with_context": [pc.sum(pc.cast(texted, pa.int64())).as_py() or 0]})


EARLY_ROWS = 1000  # captions after which a low context coverage is reported, long before the end


class _Coverage:
    """Share of captions whose prompt had a Wikipedia excerpt; warns once, early, when it is low
    (a wrong taxon join captions millions of images without guidance otherwise)."""

    def __init__(self, minimum: float):
        self.minimum, self.rows, self.texted, self.warned = minimum, 0, 0, False

    def update(self, rows: int, texted: int, final: bool = False) -> str | None:
        self.rows, self.texted = self.rows + rows, self.texted + texted
        if self.warned or not self.rows or (self.rows < EARLY_ROWS and not final):
            return None
        share = self.texted / self.rows
        if share >= self.minimum:
            return None
        self.warned = True
        message = (f"only {share:.1%} of {self.rows:,} captions had a Wikipedia excerpt in their prompt (below "
                   f"caption.min_context_coverage={self.minimum:.0%}): check caption.context_uri and that the "
                   f"dataset's taxon columns (genus, species, scientific_name) match the context table's names")
        log.warning("caption: %s", message)
        return message


def engine_class(name: str) -> type[EngineActor]:
    """The actor class of ``caption.engine`` (imported only when chosen: vLLM is optional)."""
    if name == "vllm":
        from biocap_ray.caption.vllm_engine import VLLMCaptioner

        return VLLMCaptioner
    from biocap_ray.caption.transformers_engine import TransformersCaptioner

    return TransformersCaptioner


def _engine_stage(prepared, c: CaptionConfig, setup: CaptionSetup, ledger):
    """The engine as a Ray Data actor pool: one engine per actor, GPUs and restarts per the config.

    An actor lost with its node (a spot reclaim) is restarted wherever its accelerator type is
    free again (the autoscaler brings a node up for it), and the batches it held wait for it,
    however long that takes: their retries are unbounded, the actor's restarts are not. The other
    engines go on with the rest meanwhile. Its batches' rows were not written, so they run once more.
    """
    from ray.data import ActorPoolStrategy

    low, high = c.concurrency
    return prepared.map_batches(
        engine_class(c.engine),
        fn_constructor_kwargs={"setup": setup, "cfg": c, "ledger": ledger},
        compute=ActorPoolStrategy(min_size=low, max_size=high),
        batch_size=c.batch_size,
        num_cpus=c.num_cpus_per_engine,
        num_gpus=c.num_gpus_per_engine * c.tensor_parallel_size,
        accelerator_type=c.accelerator_type,
        max_restarts=c.engine_max_restarts,
        max_task_retries=-1,
        runtime_env={"env_vars": c.engine_env} if c.engine_env else None,
    )


class _Progress:
    """Live images/s, tokens/s and ETA: a tqdm bar on a terminal; elsewhere (``ray job logs``,
    files) one log line every ``every_s`` seconds, since a bar's redraws are garbage there."""

    def __init__(self, total: int | None, label: str, every_s: float = 10.0):
        from tqdm import tqdm

        self.total, self.label, self.every_s = total, label, every_s
        self.bar = tqdm(total=total, unit="img", desc=label, mininterval=2.0) if interactive() else None
        self.start, self.images, self.tokens = time.perf_counter(), 0, 0
        self.next_line = self.start + every_s
        self.first_at = self.last_at = None  # steady state: from the first written part to the last
        self.after_first = 0

    def update(self, images: int, tokens: int) -> None:
        now = time.perf_counter()
        if self.first_at is None:
            self.first_at = now
        else:
            self.after_first += images
        self.last_at = now
        self.images += images
        self.tokens += tokens
        elapsed = max(now - self.start, 1e-9)
        if self.bar is not None:
            self.bar.set_postfix(img_s=f"{self.images / elapsed:.2f}", tok_s=f"{self.tokens / elapsed:.1f}")
            self.bar.update(images)
        elif now >= self.next_line:
            self.next_line = now + self.every_s
            log.info("%s", self.line(elapsed))

    def line(self, elapsed: float) -> str:
        rate = self.images / elapsed
        done = f"{self.images:,}" + (f"/{self.total:,} images ({self.images / self.total:.0%})" if self.total
                                     else " images")
        eta = ""
        if self.total and rate > 0:
            left = int((self.total - self.images) / rate)
            eta = f", ETA {left // 3600}:{left % 3600 // 60:02d}:{left % 60:02d}"
        return f"{self.label}: {done}, {rate:.2f} img/s, {self.tokens / elapsed:.1f} tok/s{eta}"

    def close(self) -> float:
        seconds = time.perf_counter() - self.start
        if self.bar is not None:
            self.bar.close()
        elif self.images:
            log.info("%s (done)", self.line(seconds))
        return seconds

    def steady_rate(self) -> float | None:
        """Images/s once the engine is producing (engine start-up excluded)."""
        if self.first_at is None or self.last_at == self.first_at:
            return None
        return self.after_first / (self.last_at - self.first_at)


_COUNTED = ("rows", "error_rows", "qc_pass", *QC_FLAGS, "output_tokens", "cached_tokens", "cached_of_input")


def _tally(batch: pa.Table) -> pa.Table:
    """One row of counts per batch of caption rows (pyarrow compute; summed in the cluster)."""
    ok = batch.filter(pc.is_null(batch.column("error")))
    cached = ok.filter(pc.is_valid(ok.column("cached_tokens")))

    def total(table: pa.Table, column: str) -> int:
        values = table.column(column)
        return int(pc.sum(pc.cast(values, pa.int64())).as_py() or 0) if len(values) else 0

    row = {"rows": batch.num_rows, "error_rows": batch.num_rows - ok.num_rows, **{f: total(ok, f) for f in ("qc_pass", *QC_FLAGS)},
           "output_tokens": total(ok, "output_tokens"), "cached_tokens": total(cached, "cached_tokens"),
           "cached_of_input": total(cached, "input_tokens"), "with_cached": cached.num_rows}
    return pa.table({k: [v] for k, v in row.items()})


def summarize(folder: str) -> dict:
    """Counts, QC pass rate per check, context coverage and prefix-cache hits over the captions,
    computed by Ray Data aggregates over a few columns: no caption row reaches the driver."""
    from ray.data.aggregate import Sum
    from ray.data.expressions import col

    columns = ["uid", "error", "qc_pass", *QC_FLAGS, "output_tokens", "cached_tokens", "input_tokens",
               "context_level", "examples_level"]
    ds = outputs.dataset(folder, columns)
    if ds is None:
        return {"images": 0, "captioned": 0, "errors": 0, "qc_pass": 0, "qc_pass_rate": 0.0,
                "qc_failures": {f: 0 for f in QC_FLAGS}, "context_levels": {}, "examples_levels": {},
                "prefix_cache_hit_rate": None, "output_tokens": 0, "error_examples": []}
    ds = ds.materialize()  # a few small columns, read once for the passes below
    tallies = ds.map_batches(_tally, batch_format="pyarrow")
    t = tallies.aggregate(*(Sum(c) for c in (*_COUNTED, "with_cached")))
    t = {k.removeprefix("sum(").rstrip(")"): int(v or 0) for k, v in t.items()}
    images = t["rows"]
    captioned = images - t["error_rows"]

    def levels(column: str) -> dict[str, int]:
        return value_counts(ds.filter(expr=col("error").is_null()).select_columns([column]), column)

    errors = ds.filter(expr=col("error").is_not_null()).select_columns(["uid", "error"]).take(5)
    return {
        "images": images,
        "captioned": captioned,
        "errors": t["error_rows"],
        "qc_pass": t["qc_pass"],
        "qc_pass_rate": round(t["qc_pass"] / captioned, 4) if captioned else 0.0,
        "qc_failures": {f: t[f] for f in QC_FLAGS},
        "context_levels": levels("context_level"),
        "examples_levels": levels("examples_level"),
        # prompt tokens the engine served from its prefix cache (vLLM only)
        "prefix_cache_hit_rate": round(t["cached_tokens"] / max(1, t["cached_of_input"]), 4)
        if t["with_cached"] else None,
        "output_tokens": t["output_tokens"],
        "error_examples": [{"uid": r["uid"], "error": r["error"]} for r in errors],
    }


def caption(src: str, dst: str, cfg: Config, src_format: str | None = None) -> dict:
    """Caption every record of ``src`` into ``dst``; rerunning resumes where it stopped.

    The uids of the parts already written are skipped inside the read tasks, against a hashed
    uid set held in the object store (:mod:`biocap_ray.data.uid_set`); captions are written by
    Ray tasks, ``caption.rows_per_file`` rows per part; the driver sees only per-part counts.
    """
    c = cfg.caption
    fmt = src_format or readers.detect_format(src)
    total_in = readers.count_records(src, fmt)
    setup = build_setup(cfg)
    done, done_count = uid_set.build(outputs.part_uris(dst), num_cpus=c.num_cpus_per_task)
    todo = None if total_in is None else max(0, total_in - done_count)
    log.info("caption: %s images to do (%d done before)", "?" if todo is None else todo, done_count)
    kw = {"batch_format": "pyarrow", "num_cpus": c.num_cpus_per_task, "batch_size": c.batch_size}
    ds = readers.read_records(src, cfg.data, fmt)
    if done is not None:
        ds = ds.map_batches(uid_set.drop_members, fn_kwargs={"uid_set": [done]}, **kw)
    expected = todo if todo is not None else len(readers.units(src, cfg.data, fmt)[0]) * cfg.data.samples_per_shard
    page_rate = page.sample_rate(c.page_rows, expected)
    prepared = ds.map_batches(_prepare_udf, fn_kwargs={"setup": setup, "folder": dst, "page_rate": page_rate}, **kw)
    import ray

    ledger = start_ledger()
    try:
        written = _engine_stage(prepared, c, setup, ledger).map_batches(
            _write_udf, fn_kwargs={"folder": dst}, batch_format="pyarrow", batch_size=c.rows_per_file,
            num_cpus=c.num_cpus_per_task)
        progress, coverage = _Progress(todo, "caption"), _Coverage(c.min_context_coverage)
        images = 0
        if todo != 0:
            for counts in written.iter_batches(batch_format="pyarrow", batch_size=None):
                for n, tokens, texted in zip(*(counts.column(k).to_pylist()
                                               for k in ("rows", "output_tokens", "with_context"))):
                    progress.update(n, tokens)
                    coverage.update(n, texted)
                    images += n
        seconds, steady = progress.close(), progress.steady_rate()
        counts = ray.get(ledger.counts.remote())
    finally:  # a failed run does not leave its ledger alive until the driver exits
        ray.kill(ledger)
    summary = summarize(dst)
    texted = sum(v for k, v in summary["context_levels"].items() if k != "none")
    summary["context_coverage"] = round(texted / summary["captioned"], 4) if summary["captioned"] else None
    late = _Coverage(c.min_context_coverage).update(summary["captioned"], texted, final=True)
    summary["warnings"] = [late] if late else []
    summary["captions_page"] = None
    written_page = page.write_page(dst, c.page_rows, summary)
    if written_page:
        summary["captions_page"] = storage.redact(written_page)
    engines = c.concurrency[1]
    gpus = engines * c.num_gpus_per_engine * c.tensor_parallel_size
    rate = images / seconds if seconds and images else 0.0
    summary.update({
        "destination": storage.redact(dst),
        "this_run_images": images,
        "this_run_seconds": round(seconds, 1),
        # rows an engine was handed but that were written from another attempt (an engine lost
        # with its node mid-batch, or killed); and engine actors started, restarts included
        "rows_retried": max(0, counts["rows_received"] - images),
        "engine_starts": counts["engine_starts"],
        "images_per_s": round(rate, 3),
        "steady_images_per_s": round(steady, 3) if steady else None,
        "gpu_hours_per_million_images": round(gpus * 1e6 / rate / 3600, 2) if rate and gpus else None,
        "engine_hours_per_million_images": round(engines * 1e6 / rate / 3600, 2) if rate else None,
    })
    if c.qc_action == "drop":
        summary["dropped_by_qc"] = summary["captioned"] - summary["qc_pass"]
    log.info("caption summary: %s", summary)
    return summary
