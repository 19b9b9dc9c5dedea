"""Put captions into training shards as ``caption.txt`` (what BioCAP-style trainers read).

A distributed join on uid (Ray Data's hash join): records and captions are partitioned by uid
across the cluster, so no caption table is built on the driver or shipped to a task.
"""

from __future__ import annotations

import pyarrow as pa
import pyarrow.compute as pc

from biocap_ray import storage
from biocap_ray.caption import outputs
from biocap_ray.config import Config
from biocap_ray.data import readers, writers

NEW = "new_caption"


def _usable(batch: pa.Table, drop_failing: bool) -> pa.Table:
    keep = pc.and_(pc.is_valid(batch.column("caption")), pc.is_null(batch.column("error")))
    if drop_failing:
        keep = pc.and_(keep, pc.fill_null(batch.column("qc_pass"), False))
    return batch.filter(keep).select(["uid", "caption"]).rename_columns(["uid", NEW])


def _prefer_new(batch: pa.Table) -> pa.Table:
    """A record's new caption where it has one, else the caption it came with."""
    merged = pc.coalesce(batch.column(NEW), batch.column("caption"))
    batch = batch.set_column(batch.column_names.index("caption"), "caption", merged).drop_columns([NEW])
    from biocap_ray.data.schema import RECORD_SCHEMA

    return batch.select(RECORD_SCHEMA.names).cast(RECORD_SCHEMA)


def merge_captions(src: str, captions_uri: str, dst: str, cfg: Config, overwrite: bool = False) -> dict:
    """Shards of ``src`` (any readable dataset) with each uid's caption; QC-failing captions are
    left out when ``caption.qc_action`` is ``drop``. Records keep their old caption if none is new."""
    from ray.data.aggregate import Count

    d = cfg.data
    kw = {"batch_format": "pyarrow", "batch_size": d.batch_size, "num_cpus": d.num_cpus_per_task}
    records = readers.read_records(src, d)
    captions = outputs.dataset(captions_uri, ["uid", "caption", "qc_pass", "error"], num_cpus=d.num_cpus_per_task)
    available = 0
    if captions is not None:
        captions = captions.map_batches(_usable, fn_kwargs={"drop_failing": cfg.caption.qc_action == "drop"},
                                        batch_format="pyarrow", num_cpus=d.num_cpus_per_task)
        available = int(captions.aggregate(Count())["count()"])
    if available:
        # about one output partition per input shard: each joins in memory on its own
        partitions = max(2, len(storage.list_files(src, (".tar", ".parquet"))))
        records = records.join(captions, join_type="left_outer", num_partitions=partitions, on=("uid",))
        records = records.map_batches(_prefer_new, **kw)
    good = records.map_batches(writers.split_errors, fn_kwargs={"errors_uri": storage.join(dst, writers.ERRORS_DIR)},
                               **kw)
    written = writers.write_webdataset(good, dst, d, overwrite=overwrite)
    return {"destination": storage.redact(dst), "captions_available": available, "records": written,
            "errors": writers.read_errors(dst).num_rows}
