"""The caption output: Parquet parts, each written whole, so an interrupted run leaves only
complete parts and a rerun skips exactly the uids they hold (no duplicates, no gaps)."""

from __future__ import annotations

import hashlib
import logging

import pyarrow as pa
import pyarrow.parquet as pq

from biocap_ray import storage
from biocap_ray.caption.quality import QC_FLAGS

log = logging.getLogger(__name__)

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


def attempt_dir(dst: str, attempt: int) -> str:
    return dst if attempt == 0 else storage.join(dst, f"retry-{attempt}")


def write_part(rows: pa.Table, folder: str, prefix: str = "part") -> str:
    """Write ``rows`` as one Parquet part named by a hash of its uids (a rewrite is idempotent).

    Local parts are written to a temporary name and renamed; an S3 PUT is atomic already.
    """
    rows = rows.select(OUTPUT_SCHEMA.names).cast(OUTPUT_SCHEMA)
    digest = hashlib.sha1("\n".join(rows.column("uid").to_pylist()).encode()).hexdigest()[:20]
    uri = storage.join(folder, f"{prefix}-{digest}.parquet")
    fs, path = storage.resolve(uri)
    if storage.is_s3(uri):
        pq.write_table(rows, path, filesystem=fs)
    else:
        fs.create_dir(path.rsplit("/", 1)[0], recursive=True)
        tmp = path.rsplit("/", 1)[0] + "/_tmp-" + path.rsplit("/", 1)[1]
        pq.write_table(rows, tmp, filesystem=fs)
        fs.move(tmp, path)
    return uri


def _parts(folder: str) -> list[str]:
    if not storage.exists(folder):
        return []
    fs, root = storage.resolve(folder)
    return [p for p in storage.list_files(folder, (".parquet",)) if p.rsplit("/", 1)[0] == root.rstrip("/")]


def read_parts(folder: str, columns: list[str] | None = None) -> pa.Table:
    """Every complete part directly in ``folder`` (not in sub-folders)."""
    fs, _ = storage.resolve(folder)
    tables = []
    for path in _parts(folder):
        try:
            tables.append(pq.read_table(path, filesystem=fs, columns=columns))
        except (pa.ArrowInvalid, OSError) as exc:  # only a foreign or damaged file can fail here
            log.warning("skipping unreadable caption part %s: %s", path, exc)
    if not tables:
        return OUTPUT_SCHEMA.empty_table().select(columns) if columns else OUTPUT_SCHEMA.empty_table()
    return pa.concat_tables(tables, promote_options="default")  # parts written before a column was added


def done_uids(dst: str, attempt: int = 0) -> set[str]:
    return set(read_parts(attempt_dir(dst, attempt), ["uid"]).column("uid").to_pylist())


def read_captions(dst: str) -> pa.Table:
    """One row per uid over all attempts: the first passing attempt, else the latest one."""
    tables = [read_parts(dst)]
    attempt = 1
    while storage.exists(attempt_dir(dst, attempt)):
        tables.append(read_parts(attempt_dir(dst, attempt)))
        attempt += 1
    rows = pa.concat_tables(tables).to_pylist()
    best: dict[str, dict] = {}
    for row in sorted(rows, key=lambda r: r["attempt"]):
        cur = best.get(row["uid"])
        if cur is None or not cur["qc_pass"]:
            best[row["uid"]] = row
    return pa.Table.from_pylist(sorted(best.values(), key=lambda r: r["uid"]), schema=OUTPUT_SCHEMA)
