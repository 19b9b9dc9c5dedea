"""The Wikipedia fetch job: a Ray Data pool of API clients over a dataset's distinct taxa.

Resumable: keys already in the table are skipped, every API response is cached, parts are
written whole, and transient failures are reported but not written, so the next run retries them.
"""

from __future__ import annotations

import math

import pyarrow as pa

from biocap_ray import storage
from biocap_ray.config import Config, ContextConfig
from biocap_ray.context import table as ctable
from biocap_ray.context.inputs import read_taxa
from biocap_ray.context.taxa import QUERY_FIELDS, genus_query

QUERY_SCHEMA = pa.schema([(f, pa.string()) for f in QUERY_FIELDS])
_STAT_COLUMNS = ("error", "n_requests", "n_cache_hits", "n_retries")
MAX_REPORTED_ERRORS = 20


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
    summary = ctable.new_summary(len(queries), problems)
    summary["skipped_done"] = len(queries) - len(todo)
    summary["http"] = {"requests": 0, "cache_hits": 0, "retries": 0}
    cache_uri = ccfg.cache_uri or storage.join(dst, "_cache")
    writer = ctable.PartWriter(dst, ccfg.rows_per_file, done)
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
    return ctable.finish_summary(summary, dst)
