"""Put captions into training shards as ``caption.txt`` (what BioCAP-style trainers read)."""

from __future__ import annotations

import pyarrow as pa

from biocap_ray import storage
from biocap_ray.caption.outputs import read_captions
from biocap_ray.config import Config
from biocap_ray.data import readers, writers


def _attach(batch: pa.Table, captions: dict[str, str]) -> pa.Table:
    uids = batch.column("uid").to_pylist()
    column = pa.array([captions.get(u) for u in uids], pa.string())
    return batch.set_column(batch.column_names.index("caption"), "caption", column)


def merge_captions(src: str, captions_uri: str, dst: str, cfg: Config, overwrite: bool = False) -> dict:
    """Shards of ``src`` (any readable dataset) with each uid's best caption; QC-failing captions
    are left out when ``caption.qc_action`` is ``drop``. Records keep their old caption if none is new."""
    table = read_captions(captions_uri).to_pylist()
    usable = [r for r in table if r["caption"] and (cfg.caption.qc_action != "drop" or r["qc_pass"])]
    captions = {r["uid"]: r["caption"] for r in usable}
    d = cfg.data
    kw = {"batch_format": "pyarrow", "batch_size": d.batch_size, "num_cpus": d.num_cpus_per_task}
    ds = readers.read_records(src, d).map_batches(_attach, fn_kwargs={"captions": captions}, **kw)
    ds = ds.map_batches(writers.split_errors, fn_kwargs={"errors_uri": storage.join(dst, writers.ERRORS_DIR)}, **kw)
    writers.write_webdataset(ds, dst, d, overwrite=overwrite)
    merged = readers.read_records(dst, d, "webdataset").select_columns(["caption"])
    with_caption = sum(1 for r in merged.iter_rows() if r["caption"])
    return {"destination": storage.redact(dst), "captions_available": len(captions), "records_with_caption": with_caption,
            "errors": writers.read_errors(dst).num_rows}
