"""Writers: records → WebDataset shards (TreeOfLife-10M keys) or Parquet, local or s3://.

Good records go to the destination; error rows go to ``<dst>/_errors/`` as Parquet (uid,
origin, error, no image bytes) so nothing is silently lost. Error files are named by a
hash of their uids, so a retried task rewrites the same file instead of duplicating it.
"""

from __future__ import annotations

import hashlib
import json

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from biocap_ray import storage
from biocap_ray.config import DataConfig
from biocap_ray.data import schema
from biocap_ray.data.taxonomy import TEXT_TYPES, Taxon
from biocap_ray.data.validate import check_batch, image_extension

ERRORS_DIR = "_errors"  # leading underscore: dataset readers skip it
ERROR_COLUMNS = ("uid", "origin", "error")
_META_FIELDS = ("uid", "kingdom", "phylum", "class", "order", "family", "genus", "species",
                "scientific_name", "common_name", "source")


def shard_sample(record: dict) -> dict:
    """A record as a WebDataset sample: image under its format's key, every text type as ``.txt``."""
    taxon = Taxon.from_mapping(record)
    sample: dict = {"__key__": record["uid"], image_extension(record["image"]): record["image"]}
    for text_type, text in taxon.texts().items():
        sample[f"{text_type}.txt"] = text
    if record.get("caption"):
        sample["caption.txt"] = record["caption"]
    sample["json"] = json.dumps({k: record.get(k) for k in _META_FIELDS}, ensure_ascii=False)
    return sample


_SHARD_SCHEMA = pa.schema(
    [("__key__", pa.string()), ("jpg", pa.binary()), ("png", pa.binary()), ("webp", pa.binary())]
    + [(f"{t}.txt", pa.string()) for t in TEXT_TYPES]
    + [("caption.txt", pa.string()), ("json", pa.string())]
)


def _to_shard_batch(batch: pa.Table) -> pa.Table:
    return pa.Table.from_pylist([shard_sample(r) for r in batch.to_pylist()], schema=_SHARD_SCHEMA)


def split_errors(batch: pa.Table, errors_uri: str) -> pa.Table:
    """Write this batch's error rows under ``errors_uri``; return the good rows."""
    is_error = pc.is_valid(batch.column("error"))
    errors = batch.filter(is_error).select(list(ERROR_COLUMNS))
    if errors.num_rows:
        digest = hashlib.sha1("\n".join(errors.column("uid").to_pylist()).encode()).hexdigest()[:16]
        fs, path = storage.resolve(storage.join(errors_uri, f"errors-{digest}.parquet"))
        if not storage.is_s3(errors_uri):
            fs.create_dir(path.rsplit("/", 1)[0], recursive=True)
        pq.write_table(errors, path, filesystem=fs)
    return batch.filter(pc.invert(is_error))


def checked(ds, cfg: DataConfig, dst: str):
    """Validate every image; error rows are recorded under ``dst/errors``, good rows flow on."""
    kwargs = {"batch_size": cfg.batch_size, "num_cpus": cfg.num_cpus_per_task, "batch_format": "pyarrow"}
    ds = ds.map_batches(check_batch, fn_kwargs={"max_pixels": cfg.max_image_pixels}, **kwargs)
    return ds.map_batches(split_errors, fn_kwargs={"errors_uri": storage.join(dst, ERRORS_DIR)}, **kwargs)


def _save_mode(overwrite: bool):
    from ray.data import SaveMode

    return SaveMode.OVERWRITE if overwrite else SaveMode.ERROR


def _counted(sink_class):
    """Ray's own file sink, remembering how many rows the write stored (Ray reports it to the
    driver once, at the end), so a stage counts its output without reading it again."""

    class Counted(sink_class):
        rows_written = 0

        def on_write_complete(self, write_result) -> None:
            super().on_write_complete(write_result)
            self.rows_written = int(write_result.num_rows)

    return Counted


def _blocks_of(ds, rows: int):
    """Blocks of exactly ``rows`` rows (the last one fewer), so that the sink, which writes one file
    per bundle of at least ``rows``, writes files of ``rows``. Without it a file is whatever a read
    task produced: up to Ray's 128 MiB block, tens of thousands of small records, all in one task."""
    return ds.repartition(target_num_rows_per_block=rows, strict=True)


def write_webdataset(ds, dst: str, cfg: DataConfig, overwrite: bool = False) -> int:
    """Write good records as ``.tar`` shards of ``samples_per_shard`` samples; returns the count."""
    from ray.data._internal.datasource.webdataset_datasink import WebDatasetDatasink

    fs, path = storage.resolve(dst)
    shards = _blocks_of(ds.map_batches(
        _to_shard_batch, batch_size=cfg.batch_size, num_cpus=cfg.num_cpus_per_task, batch_format="pyarrow"
    ), cfg.samples_per_shard)
    sink = _counted(WebDatasetDatasink)(path, encoder=None, min_rows_per_file=cfg.samples_per_shard,
                                        filesystem=fs, dataset_uuid=shards._uuid, mode=_save_mode(overwrite))
    shards.write_datasink(sink)
    return sink.rows_written


def write_parquet(ds, dst: str, cfg: DataConfig, overwrite: bool = False) -> int:
    """Write good records as Parquet files of ``samples_per_shard`` rows in the record schema;
    returns the count."""
    from ray.data._internal.datasource.parquet_datasink import ParquetDatasink

    fs, path = storage.resolve(dst)
    ds = _blocks_of(ds, cfg.samples_per_shard)
    sink = _counted(ParquetDatasink)(path, arrow_parquet_args={"schema": schema.RECORD_SCHEMA},
                                     min_rows_per_file=cfg.samples_per_shard,
                                     filesystem=fs, dataset_uuid=ds._uuid, mode=_save_mode(overwrite))
    ds.write_datasink(sink)
    return sink.rows_written


def read_errors(dst: str) -> pa.Table:
    """All error rows recorded under ``dst``, sorted by uid."""
    uri = storage.join(dst, ERRORS_DIR)
    if not storage.exists(uri):
        return pa.table({c: pa.array([], pa.string()) for c in ERROR_COLUMNS})
    fs, _ = storage.resolve(uri)
    tables = [pq.read_table(p, filesystem=fs) for p in storage.list_files(uri, (".parquet",))]
    return pa.concat_tables(tables).sort_by("uid") if tables else pa.table(
        {c: pa.array([], pa.string()) for c in ERROR_COLUMNS}
    )
