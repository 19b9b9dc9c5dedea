"""The taxa a context table is built for: a dataset's distinct taxa, or a taxon list file."""

from __future__ import annotations

from collections import Counter

import pyarrow as pa
import pyarrow.compute as pc

from biocap_ray.config import Config, DataConfig
from biocap_ray.context.taxa import distinct_queries
from biocap_ray.data.taxonomy import RANKS, is_taxon_list, read_taxon_list

TAXON_COLUMNS: tuple[str, ...] = (*RANKS, "scientific_name", "common_name")


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


def _dataset_taxa(src: str, data: DataConfig, src_format: str | None) -> tuple[list[dict], int]:
    """Distinct taxa of a dataset and its error-row count: a Ray Data group-by over the taxon
    columns (never image bytes); only one row per distinct taxon reaches the driver."""
    from ray.data.aggregate import Sum

    from biocap_ray.data.readers import read_records

    ds = read_records(src, data, src_format).select_columns([*TAXON_COLUMNS, "error"])
    per_batch = ds.map_batches(_batch_taxa, batch_format="pyarrow", num_cpus=data.num_cpus_per_task)
    totals = per_batch.groupby(list(TAXON_COLUMNS)).aggregate(Sum("bad"), Sum("records")).take_all()
    error_rows = sum(int(r["sum(bad)"] or 0) for r in totals)
    taxa = [{c: r[c] for c in TAXON_COLUMNS} for r in totals if r["sum(records)"]]
    return sorted(taxa, key=lambda r: tuple(str(r[c] or "") for c in TAXON_COLUMNS)), error_rows


def read_taxa(src: str, cfg: Config, src_format: str | None = None) -> tuple[list[dict], list[dict], Counter]:
    """(distinct taxon rows, distinct queries, problem counts) of a dataset or a taxon list."""
    problems: Counter = Counter()
    if src_format is None and is_taxon_list(src):
        rows = read_taxon_list(src, problems)
        unique = {tuple(r.get(c) for c in TAXON_COLUMNS): r for r in rows}
        rows = list(unique.values())
    else:
        rows, error_rows = _dataset_taxa(src, cfg.data, src_format)
        if error_rows:
            problems["error_records_skipped"] = error_rows
    return rows, distinct_queries(rows, problems), problems
