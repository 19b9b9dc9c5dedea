"""The caption output: Parquet parts of one row per uid, each written whole by a Ray task, so
an interrupted run leaves only complete parts and a rerun skips exactly the uids they hold
(no duplicates, no gaps)."""

from __future__ import annotations

import hashlib

import pyarrow as pa
import pyarrow.parquet as pq

from biocap_ray import storage
from biocap_ray.caption.quality import QC_FLAGS

OUTPUT_SCHEMA = pa.schema(
    [("uid", pa.string()), ("caption", pa.string())]
    + [(f, pa.bool_()) for f in (*QC_FLAGS, "qc_pass")]
    + [
        ("engine", pa.string()),
        ("model", pa.string()),
        ("prompt_version", pa.string()),
        ("context_level", pa.string()),
        ("examples_level", pa.string()),
        ("context_hash", pa.string()),
        ("prefix_key", pa.string()),
        ("input_tokens", pa.int32()),
        ("output_tokens", pa.int32()),
        ("cached_tokens", pa.int32()),
        ("latency_s", pa.float32()),
        ("attempt", pa.int16()),
        ("error", pa.string()),
    ]
)


def write_part(rows: pa.Table, folder: str, prefix: str = "part") -> str:
    """Write ``rows`` as one Parquet part named by a hash of its uids (a rewrite is idempotent),
    whole or not at all (:func:`biocap_ray.storage.write_bytes`)."""
    rows = rows.select(OUTPUT_SCHEMA.names).cast(OUTPUT_SCHEMA)
    digest = hashlib.sha1("\n".join(rows.column("uid").to_pylist()).encode()).hexdigest()[:20]
    uri = storage.join(folder, f"{prefix}-{digest}.parquet")
    storage.write_bytes(uri, storage.parquet_bytes(rows))
    return uri


def part_uris(folder: str) -> list[str]:
    """The complete parts directly in ``folder`` (a part being written has a hidden name)."""
    if not storage.exists(folder):
        return []
    fs, root = storage.resolve(folder)
    paths = [p for p in storage.list_files(folder, (".parquet",)) if p.rsplit("/", 1)[0] == root.rstrip("/")]
    return [f"s3://{p}" for p in paths] if storage.is_s3(folder) else paths


def dataset(folder: str, columns: list[str] | None = None, num_cpus: float = 0.25):
    """Every caption row as a Ray Dataset (None when there are none yet): for cluster-side
    summaries and joins, so no caption passes through the driver."""
    import ray

    uris = part_uris(folder)
    if not uris:
        return None
    from biocap_ray.data.readers import bounded_shuffles

    fs, _ = storage.resolve(folder)
    return bounded_shuffles(ray.data.read_parquet([storage.resolve(u)[1] for u in uris], filesystem=fs, columns=columns,
                                                  schema=OUTPUT_SCHEMA if columns is None else None, num_cpus=num_cpus))


def read_parts(folder: str, columns: list[str] | None = None) -> pa.Table:
    """Every part as one table on this process: for tests and small outputs only."""
    fs, _ = storage.resolve(folder)
    tables = [pq.read_table(storage.resolve(u)[1], filesystem=fs, columns=columns) for u in part_uris(folder)]
    if not tables:
        return OUTPUT_SCHEMA.empty_table().select(columns) if columns else OUTPUT_SCHEMA.empty_table()
    return pa.concat_tables(tables, promote_options="default")
