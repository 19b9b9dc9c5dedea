"""The per-taxon context table: one row per (rank, name, lineage), written as Parquet parts.

Both ``context wikipedia`` and ``context import`` produce it; :mod:`.lookup` reads it. Parts
are written whole (:func:`biocap_ray.storage.write_bytes`), so an interrupted run leaves only
complete parts and a rerun skips the keys they hold.
"""

from __future__ import annotations

import json
import time
import uuid
from collections import Counter

import pyarrow as pa
import pyarrow.parquet as pq

from biocap_ray import storage
from biocap_ray.data.taxonomy import RANKS

CONTEXT_SCHEMA = pa.schema(
    [("key", pa.string()), ("rank", pa.string()), ("name", pa.string())]
    + [(r, pa.string()) for r in RANKS]
    + [
        ("scientific_name", pa.string()),
        ("common_name", pa.string()),
        ("text", pa.string()),
        ("status", pa.string()),
        ("section", pa.string()),
        ("match", pa.string()),
        ("note", pa.string()),
        ("page_title", pa.string()),
        ("page_id", pa.int64()),
        ("revision_id", pa.int64()),
        ("url", pa.string()),
        ("licence", pa.string()),
        ("source", pa.string()),
    ]
)
def to_table(rows: list[dict]) -> pa.Table:
    return pa.Table.from_pylist([{f.name: r.get(f.name) for f in CONTEXT_SCHEMA} for r in rows], schema=CONTEXT_SCHEMA)


def read_context(uri: str) -> pa.Table:
    """Every part under ``uri`` (a folder or one .parquet file) as one table; empty if there are none."""
    if not storage.exists(uri):
        return CONTEXT_SCHEMA.empty_table()
    fs, _ = storage.resolve(uri)
    tables = []
    for path in storage.list_files(uri, (".parquet",)):
        table = pq.read_table(path, filesystem=fs)
        cols = [
            table.column(f.name).cast(f.type) if f.name in table.column_names else pa.nulls(table.num_rows, f.type)
            for f in CONTEXT_SCHEMA
        ]
        tables.append(pa.Table.from_arrays(cols, schema=CONTEXT_SCHEMA))
    return pa.concat_tables(tables) if tables else CONTEXT_SCHEMA.empty_table()


def done_keys(uri: str) -> set[str]:
    return set(read_context(uri).column("key").to_pylist())


def new_run_id() -> str:
    return time.strftime("%Y%m%dT%H%M%S") + "-" + uuid.uuid4().hex[:6]


def write_part(dst: str, rows: list[dict], run_id: str, seq: int) -> str:
    """Write ``rows`` as ``<dst>/part-<run>-<seq>.parquet``, whole or not at all; returns its URI."""
    uri = storage.join(dst, f"part-{run_id}-{seq:05d}.parquet")
    storage.write_bytes(uri, storage.parquet_bytes(to_table(rows)))
    return uri


def remove_parts(dst: str) -> int:
    """Delete the data parts under ``dst`` (not the cache or side files); returns how many."""
    if not storage.exists(dst):
        return 0
    fs, _ = storage.resolve(dst)
    paths = storage.list_files(dst, (".parquet",))
    for path in paths:
        fs.delete_file(path)
    return len(paths)


class PartWriter:
    """Buffers rows and writes whole parts of ``rows_per_file``; never writes a key twice."""

    def __init__(self, dst: str, rows_per_file: int, done: set[str]) -> None:
        self.dst, self.rows_per_file, self.done = dst, rows_per_file, done
        self.run_id, self.pending, self.seq, self.rows = new_run_id(), [], 0, 0

    def add(self, row: dict) -> None:
        if row["key"] in self.done:
            return
        self.done.add(row["key"])
        self.pending.append(row)
        if len(self.pending) >= self.rows_per_file:
            self.flush()

    def flush(self) -> None:
        if self.pending:
            write_part(self.dst, self.pending, self.run_id, self.seq)
            self.seq += 1
            self.rows += len(self.pending)
            self.pending = []


def new_summary(queries: int, problems: Counter) -> dict:
    return {"taxa": queries, "skipped_done": 0, "processed": 0, "rows_written": 0, "files_written": 0,
            "status": Counter(), "problems": dict(sorted(problems.items())), "errors": []}


def finish_summary(summary: dict, dst: str) -> dict:
    summary["status"] = dict(sorted(summary["status"].items()))
    summary["output"] = storage.redact(dst)
    storage.write_bytes(storage.join(dst, "_summary.json"), json.dumps(summary, indent=2).encode())
    return summary
