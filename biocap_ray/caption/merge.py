"""Put captions into training shards as ``caption.txt`` (what BioCAP-style trainers read).

Per file, so images never cross the network: a hash join on uid routes each caption to the file
holding its record (records' keys, no image read), a group-by on that file gathers one file's
captions, and the task that gets them reads the file and sets the captions. Only uids, paths and
caption text are shuffled; no caption table is built on the driver or shipped to a task.
"""

from __future__ import annotations

import pyarrow as pa
import pyarrow.compute as pc

from biocap_ray import storage
from biocap_ray.caption import outputs
from biocap_ray.config import Config, DataConfig
from biocap_ray.data import readers, writers
from biocap_ray.data.schema import RECORD_SCHEMA

NEW = "new_caption"


def _usable(batch: pa.Table, drop_failing: bool) -> pa.Table:
    keep = pc.and_(pc.is_valid(batch.column("caption")), pc.is_null(batch.column("error")))
    if drop_failing:
        keep = pc.and_(keep, pc.fill_null(batch.column("qc_pass"), False))
    return batch.filter(keep).select(["uid", "caption"]).rename_columns(["uid", NEW])


def _merge_file(captions: pa.Table, src: str, cfg: DataConfig) -> pa.Table:
    """The records of the one file ``captions`` (its keys, each with its new caption or null) route
    to, each with its new caption where it has one, else the caption it came with."""
    records = readers.file_records(src, captions.column("path")[0].as_py(), cfg)
    fresh = captions.filter(pc.is_valid(captions.column(NEW)))
    new = pc.take(fresh.column(NEW), pc.index_in(records.column("uid"), value_set=fresh.column("uid")))
    merged = pc.coalesce(new, records.column("caption"))
    return records.set_column(records.column_names.index("caption"), "caption", merged).cast(RECORD_SCHEMA)


def merge_captions(src: str, captions_uri: str, dst: str, cfg: Config, overwrite: bool = False) -> dict:
    """Shards of ``src`` (shards or Parquet files, the ingest's output) with each uid's caption;
    QC-failing captions are left out when ``caption.qc_action`` is ``drop``. Records keep their old
    caption if none is new."""
    from ray.data import DataContext
    from ray.data.aggregate import Count

    d = cfg.data
    kw = {"batch_format": "pyarrow", "batch_size": d.batch_size, "num_cpus": d.num_cpus_per_task}
    captions = outputs.dataset(captions_uri, ["uid", "caption", "qc_pass", "error"], num_cpus=d.num_cpus_per_task)
    available = 0
    if captions is not None:
        captions = captions.map_batches(_usable, fn_kwargs={"drop_failing": cfg.caption.qc_action == "drop"},
                                        batch_format="pyarrow", num_cpus=d.num_cpus_per_task)
        available = int(captions.aggregate(Count())["count()"])
    if available:
        # small rows: a partition per file up to Ray's default shuffle parallelism, not more
        files = len(storage.list_files(src, (".tar", ".parquet")))
        partitions = min(max(2, files), DataContext.get_current().default_hash_shuffle_parallelism)
        keys = readers.bounded_shuffles(readers.file_keys(src, d))
        routed = keys.join(captions, join_type="left_outer", num_partitions=partitions, on=("uid",))
        records = routed.groupby("path", num_partitions=partitions).map_groups(
            _merge_file, fn_kwargs={"src": src, "cfg": d}, batch_format="pyarrow", num_cpus=d.num_cpus_per_task)
    else:
        records = readers.read_records(src, d)
    good = records.map_batches(writers.split_errors, fn_kwargs={"errors_uri": storage.join(dst, writers.ERRORS_DIR)},
                               **kw)
    written = writers.write_webdataset(good, dst, d, overwrite=overwrite)
    return {"destination": storage.redact(dst), "captions_available": available, "records": written,
            "errors": writers.read_errors(dst).num_rows}
