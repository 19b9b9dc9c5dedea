"""Building the context table: a Ray Data fetch job over a dataset's taxa, or an offline import.

Both are resumable: keys already in the output are skipped, every API response is cached,
parts are written whole, and transient failures are reported but not written, so the next
run retries them. Each returns a summary dict (counts of statuses, input problems, HTTP use).
"""

from __future__ import annotations

import csv
import io
import json
import logging
import math
import posixpath
from collections import Counter

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from biocap_ray import storage
from biocap_ray.config import Config, ContextConfig
from biocap_ray.context import table as ctable
from biocap_ray.context.examples import FormatExamples
from biocap_ray.context.extract import visual_sentences
from biocap_ray.context.taxa import QUERY_FIELDS, distinct_queries, genus_query
from biocap_ray.data.taxonomy import RANKS

log = logging.getLogger(__name__)

TAXON_COLUMNS: tuple[str, ...] = (*RANKS, "scientific_name", "common_name")
QUERY_SCHEMA = pa.schema([(f, pa.string()) for f in QUERY_FIELDS])
_STAT_COLUMNS = ("error", "n_requests", "n_cache_hits", "n_retries")
MAX_REPORTED_ERRORS = 20


# --- input taxa ---------------------------------------------------------------------------------


def _decode(data: bytes, problems: Counter) -> str:
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError:
        text = data.decode("utf-8-sig", errors="replace")
        problems["non_utf8_lines"] += sum(1 for line in text.splitlines() if "\ufffd" in line)
        return text


def _is_taxon_list(src: str) -> bool:
    """A CSV/TSV without a ``file`` column, or a Parquet without ``image``, lists taxa, not images."""
    lower = src.lower()
    if lower.endswith((".csv", ".tsv")):
        head = storage.read_bytes(src)[:65536].decode("utf-8-sig", errors="replace").splitlines()[:1]
        delimiter = "\t" if lower.endswith(".tsv") else ","
        header = next(csv.reader(head, delimiter=delimiter), [])
        return "file" not in [h.strip() for h in header]
    if lower.endswith(".parquet"):
        fs, path = storage.resolve(src)
        return "image" not in pq.read_schema(path, filesystem=fs).names
    return False


def _taxon_list_rows(src: str, problems: Counter) -> list[dict]:
    if src.lower().endswith(".parquet"):
        fs, path = storage.resolve(src)
        table = pq.read_table(path, filesystem=fs)
        return table.select([c for c in TAXON_COLUMNS if c in table.column_names]).to_pylist()
    text = _decode(storage.read_bytes(src), problems)
    delimiter = "\t" if src.lower().endswith(".tsv") else ","
    reader = csv.DictReader(io.StringIO(text, newline=""), delimiter=delimiter)
    if not reader.fieldnames or not any(c in reader.fieldnames for c in ("genus", "scientific_name")):
        raise ValueError(f"{storage.redact(src)}: a taxon list needs a 'genus' or 'scientific_name' column")
    return list(reader)


def _batch_taxa(batch: pa.Table) -> pa.Table:
    """This batch's distinct taxa with how many good records have each; error rows counted
    under ``bad`` (taxon columns null)."""
    bad = pc.is_valid(batch.column("error"))
    good = batch.filter(pc.invert(bad)).drop_columns(["error"])
    rows = good.group_by(list(TAXON_COLUMNS), use_threads=False).aggregate([([], "count_all")])
    rows = rows.rename_columns([*TAXON_COLUMNS, "records"]).append_column("bad", pa.array([0] * rows.num_rows, pa.int64()))
    errors = int(pc.sum(bad).as_py() or 0)
    if errors:
        nulls = {c: pa.nulls(1, batch.schema.field(c).type) for c in TAXON_COLUMNS}
        rows = pa.concat_tables([rows, pa.table({**nulls, "records": [0], "bad": [errors]}, schema=rows.schema)])
    return rows


def _dataset_taxa(src: str, cfg: Config, src_format: str | None) -> tuple[list[dict], int]:
    """Distinct taxa of a dataset and its error-row count: a Ray Data group-by over the taxon
    columns (never image bytes); only one row per distinct taxon reaches the driver."""
    from ray.data.aggregate import Sum

    from biocap_ray.data.readers import read_records

    ds = read_records(src, cfg.data, src_format).select_columns([*TAXON_COLUMNS, "error"])
    per_batch = ds.map_batches(_batch_taxa, batch_format="pyarrow", num_cpus=cfg.data.num_cpus_per_task)
    totals = per_batch.groupby(list(TAXON_COLUMNS)).aggregate(Sum("bad"), Sum("records")).take_all()
    error_rows = sum(int(r["sum(bad)"] or 0) for r in totals)
    taxa = [{c: r[c] for c in TAXON_COLUMNS} for r in totals if r["sum(records)"]]
    return sorted(taxa, key=lambda r: tuple(str(r[c] or "") for c in TAXON_COLUMNS)), error_rows


def read_taxa(src: str, cfg: Config, src_format: str | None = None) -> tuple[list[dict], list[dict], Counter]:
    """(distinct taxon rows, distinct queries, problem counts) of a dataset or a taxon list."""
    problems: Counter = Counter()
    if src_format is None and _is_taxon_list(src):
        rows = _taxon_list_rows(src, problems)
        unique = {tuple(r.get(c) for c in TAXON_COLUMNS): r for r in rows}
        rows = list(unique.values())
    else:
        rows, error_rows = _dataset_taxa(src, cfg, src_format)
        if error_rows:
            problems["error_records_skipped"] = error_rows
    return rows, distinct_queries(rows, problems), problems


# --- the fetch job ------------------------------------------------------------------------------


class FetchContext:
    """Ray Data UDF: taxa queries → context rows. One API client (and rate limiter) per actor."""

    def __init__(self, cfg: dict, cache_uri: str, requests_per_second: float) -> None:
        from biocap_ray.context.cache import ResponseCache
        from biocap_ray.context.http import ApiClient

        self.cfg = ContextConfig.model_validate(cfg)
        self.client = ApiClient(
            self.cfg.api_url,
            user_agent=self.cfg.user_agent,
            requests_per_second=requests_per_second,
            timeout_s=self.cfg.timeout_s,
            max_retries=self.cfg.max_retries,
            backoff_s=self.cfg.backoff_s,
            max_backoff_s=self.cfg.max_backoff_s,
            max_response_bytes=self.cfg.max_response_bytes,
            cache=ResponseCache(cache_uri),
        )
        self.genera_done: set[str] = set()

    def _one(self, query: dict) -> dict:
        from biocap_ray.context.http import ApiError
        from biocap_ray.context.wikipedia import fetch_context

        before = dict(self.client.stats)
        try:
            row = fetch_context(
                self.client, query, max_chars=self.cfg.max_chars, search_limit=self.cfg.search_limit
            )
            row["error"] = None
        except ApiError as exc:
            row = {**query, "status": "error", "error": str(exc)}
        except Exception as exc:  # a parser bug must not cost the whole job its other taxa
            row = {**query, "status": "error", "error": f"{type(exc).__name__}: {exc}"}
        row["n_requests"] = self.client.stats["requests"] - before["requests"]
        row["n_cache_hits"] = self.client.stats["cache_hits"] - before["cache_hits"]
        row["n_retries"] = self.client.stats["retries"] - before["retries"]
        return row

    def __call__(self, batch: pa.Table) -> pa.Table:
        rows = []
        for query in batch.to_pylist():
            row = self._one(query)
            rows.append(row)
            wants_genus = row["status"] in ("not_found", "empty", "no_visual_text") and query["rank"] == "species"
            if self.cfg.genus_fallback and wants_genus and query.get("genus"):
                genus = genus_query(query)
                if genus["key"] not in self.genera_done:
                    self.genera_done.add(genus["key"])
                    rows.append(self._one(genus))
        out = ctable.to_table(rows)
        out = out.append_column("error", pa.array([r.get("error") for r in rows], pa.string()))
        for name in _STAT_COLUMNS[1:]:
            out = out.append_column(name, pa.array([r.get(name, 0) for r in rows], pa.int64()))
        return out


def _summary_base(queries: int, problems: Counter) -> dict:
    return {"taxa": queries, "skipped_done": 0, "processed": 0, "rows_written": 0, "files_written": 0,
            "status": Counter(), "problems": dict(sorted(problems.items())), "errors": []}


def _finish(summary: dict, dst: str) -> dict:
    summary["status"] = dict(sorted(summary["status"].items()))
    summary["output"] = storage.redact(dst)
    storage.write_bytes(storage.join(dst, "_summary.json"), json.dumps(summary, indent=2).encode())
    return summary


class _PartWriter:
    """Buffers rows and writes whole parts of ``rows_per_file``; never writes a key twice."""

    def __init__(self, dst: str, rows_per_file: int, done: set[str]) -> None:
        self.dst, self.rows_per_file, self.done = dst, rows_per_file, done
        self.run_id, self.pending, self.seq, self.rows = ctable.new_run_id(), [], 0, 0

    def add(self, row: dict) -> None:
        if row["key"] in self.done:
            return
        self.done.add(row["key"])
        self.pending.append(row)
        if len(self.pending) >= self.rows_per_file:
            self.flush()

    def flush(self) -> None:
        if self.pending:
            ctable.write_part(self.dst, self.pending, self.run_id, self.seq)
            self.seq += 1
            self.rows += len(self.pending)
            self.pending = []


def build_wikipedia_context(
    src: str, dst: str, cfg: Config, *, src_format: str | None = None, overwrite: bool = False
) -> dict:
    """Fetch the Wikipedia visual excerpt of every distinct taxon of ``src`` into the table at ``dst``."""
    import ray

    ccfg = cfg.context
    if overwrite:
        ctable.remove_parts(dst)
    _, queries, problems = read_taxa(src, cfg, src_format)
    done = ctable.done_keys(dst)
    todo = [q for q in queries if q["key"] not in done]
    summary = _summary_base(len(queries), problems)
    summary["skipped_done"] = len(queries) - len(todo)
    summary["http"] = {"requests": 0, "cache_hits": 0, "retries": 0}
    cache_uri = ccfg.cache_uri or storage.join(dst, "_cache")
    writer = _PartWriter(dst, ccfg.rows_per_file, done)
    todo_keys = {q["key"] for q in todo}
    summary["genus_fallback_rows"] = 0
    if todo:
        concurrency = max(1, min(ccfg.concurrency, math.ceil(len(todo) / ccfg.batch_size)))
        taxa = pa.Table.from_pylist(todo, schema=QUERY_SCHEMA)
        chunks = [taxa.slice(i, ccfg.batch_size) for i in range(0, taxa.num_rows, ccfg.batch_size)]
        ds = ray.data.from_arrow(chunks).map_batches(
            FetchContext,
            fn_constructor_kwargs={
                "cfg": ccfg.model_dump(),
                "cache_uri": cache_uri,
                "requests_per_second": ccfg.requests_per_second / concurrency,
            },
            batch_size=ccfg.batch_size,
            batch_format="pyarrow",
            concurrency=concurrency,
            num_cpus=ccfg.num_cpus_per_task,
        )
        try:
            for batch in ds.iter_batches(batch_format="pyarrow", batch_size=None):
                for row in batch.to_pylist():
                    for name in ("requests", "cache_hits", "retries"):
                        summary["http"][name] += row.pop(f"n_{name}") or 0
                    error = row.pop("error")
                    summary["status"][row["status"]] += 1
                    if row["key"] not in todo_keys:
                        summary["genus_fallback_rows"] += 1
                    if row["status"] == "error":
                        if len(summary["errors"]) < MAX_REPORTED_ERRORS:
                            summary["errors"].append(f"{row['name']}: {error}")
                        continue
                    summary["processed"] += 1
                    writer.add(row)
        finally:
            writer.flush()  # an interrupted run keeps what it fetched
    summary["rows_written"], summary["files_written"] = writer.rows, writer.seq
    summary["cache"] = storage.redact(cache_uri)
    return _finish(summary, dst)


# --- offline import -----------------------------------------------------------------------------


def _import_rows(src: str, problems: Counter) -> list[dict]:
    lower = src.lower()
    if lower.endswith(".parquet"):
        fs, path = storage.resolve(src)
        return pq.read_table(path, filesystem=fs).to_pylist()
    text = _decode(storage.read_bytes(src), problems)
    if lower.endswith(".json") and text.lstrip().startswith("["):
        return json.loads(text)
    rows = []
    for line in text.splitlines():
        if not line.strip():
            continue
        try:
            value = json.loads(line)
        except ValueError:
            problems["malformed_lines"] += 1
            continue
        if isinstance(value, dict):
            rows.append(value)
        else:
            problems["malformed_lines"] += 1
    return rows


def _title_from_url(url: str | None) -> str | None:
    if not url or "/wiki/" not in url:
        return None
    from urllib.parse import unquote

    return unquote(url.rsplit("/wiki/", 1)[1]).replace("_", " ") or None


def import_context(src: str, dst: str, cfg: Config, *, overwrite: bool = False) -> dict:
    """Turn a JSONL/JSON/Parquet of (scientific_name, text[, common_name, wikipedia_url, …]) into the table."""
    from biocap_ray.context.taxa import taxon_query

    ccfg = cfg.context
    if overwrite:
        ctable.remove_parts(dst)
    problems: Counter = Counter()
    raw = _import_rows(src, problems)
    if raw and "text" not in raw[0] and "description" not in raw[0]:
        raise ValueError(f"{storage.redact(src)}: expected a 'text' column; found {', '.join(raw[0])}")
    done = ctable.done_keys(dst)
    summary = _summary_base(0, problems)
    writer = _PartWriter(dst, ccfg.rows_per_file, done)
    keys: set[str] = set()
    origin = posixpath.basename(src.rstrip("/"))
    for item in raw:
        query = taxon_query(item, problems)
        if query is None:
            continue
        if query["key"] in keys:
            problems["duplicate_taxa"] += 1
            continue
        keys.add(query["key"])
        if query["key"] in done:
            summary["skipped_done"] += 1
            continue
        source_text = item.get("text") or item.get("description")
        if not isinstance(source_text, str):
            source_text = None
        text = visual_sentences(source_text, max_chars=ccfg.max_chars) if source_text else ""
        status = "ok" if text else ("empty" if not (source_text or "").strip() else "no_visual_text")
        url = item.get("wikipedia_url") or item.get("url")
        revision = item.get("revision_id")
        row = {
            **query,
            "text": text or None,
            "status": status,
            "section": item.get("section") or "lead",
            "match": "import",
            "page_title": item.get("page_title") or _title_from_url(url),
            "revision_id": int(revision) if isinstance(revision, (int, str)) and str(revision).isdigit() else None,
            "url": url,
            "licence": item.get("licence") or item.get("license") or "CC BY-SA 4.0",
            "source": f"import:{origin}",
        }
        summary["status"][status] += 1
        summary["processed"] += 1
        writer.add(row)
    writer.flush()
    summary["taxa"] = len(keys)
    summary["problems"] = dict(sorted(problems.items()))
    summary["rows_written"], summary["files_written"] = writer.rows, writer.seq
    return _finish(summary, dst)


# --- format-example coverage --------------------------------------------------------------------


def examples_report(src: str | None, cfg: Config, src_format: str | None = None) -> dict:
    """Which classes of ``src`` have format examples of their own, and what the others fall back to."""
    examples = FormatExamples.load(cfg.context.format_examples_uri)
    if src is None:
        return {"example_classes_available": len(examples.by_name)}
    rows, _, problems = read_taxa(src, cfg, src_format)
    report = examples.coverage(rows)
    report["problems"] = dict(sorted(problems.items()))
    return report
