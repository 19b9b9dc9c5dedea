"""The order a training run reads its data in, and where a resumed run starts reading.

A run reads its epochs as one stream of units (shard files, Parquet files or metadata chunks;
see ``readers.units``): epoch ``e`` is every unit once, in a permutation seeded by
(``train.seed``, ``e``), so each epoch differs and any run, resumed or not, has the same plan.
Each worker then mixes rows in a local shuffle buffer (``train.shuffle_buffer``).

Every optimizer step consumes exactly ``batch_size x grad_accum_steps x num_workers`` records,
so a checkpoint's step is a position in the plan. A resumed run drops the units that lie wholly
before that position from its plan before anything is read or decoded.
"""

from __future__ import annotations

import hashlib
import logging

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from biocap_ray import storage
from biocap_ray.data import readers

log = logging.getLogger(__name__)


def epoch_permutation(n_units: int, seed: int, epoch: int) -> np.ndarray:
    return np.random.default_rng([seed, epoch]).permutation(n_units)


def _split_counts(batch: pa.Table, fraction: float) -> pa.Table:
    """Per unit (``path``), how many of this batch's uids are in the training split."""
    from biocap_ray.data.split import split_rows

    rows = split_rows(batch, fraction, held_out=False) if fraction else batch
    return rows.group_by("path").aggregate([("uid", "count")]).rename_columns(["path", "records"])


def unit_counts(src: str, cfg, cache_dir: str) -> tuple[list[str], list[int]]:
    """Units of ``src`` and how many of their records are in the training split.

    Shards and Parquet files are counted once by a Ray Data job that reads only their keys (a
    shard's tar headers: the stream passes over its members' data without keeping it) and the counts are kept under ``cache_dir``,
    keyed by the file list and the split; a folder's metadata table is on the driver already.
    """
    import ray

    from biocap_ray.data.readers import detect_format
    from biocap_ray.data.shard_reader import ShardSource
    from biocap_ray.data.split import is_held_out

    fraction = 0.0 if cfg.train.val_data else cfg.train.val_fraction
    fmt = detect_format(src)
    units, sizes = readers.units(src, cfg.data, fmt)
    if fmt == "folder":
        if not fraction:
            return units, sizes
        uids = readers.read_metadata(readers.metadata_uri(src)).column("uid")
        keep = [not is_held_out(u or "", fraction) for u in uids.to_pylist()]
        starts = np.cumsum([0, *sizes])
        return units, [int(sum(keep[a:b])) for a, b in zip(starts[:-1], starts[1:])]
    key = hashlib.sha1("\n".join([*units, str(fraction)]).encode()).hexdigest()[:16]
    cache = storage.join(cache_dir, f"_unit_counts-{key}.parquet")
    if storage.exists(cache):
        table = pq.read_table(pa.BufferReader(storage.read_bytes(cache)))
    else:
        fs, _ = storage.resolve(src)
        n = cfg.data.num_cpus_per_task
        if fmt == "webdataset":
            source = ShardSource(units, cfg.data.max_image_bytes, keys_only=True, filesystem=fs)  # no member read
            keys = ray.data.read_datasource(source, num_cpus=n).rename_columns({"__key__": "uid"})
        else:
            keys = ray.data.read_parquet(units, filesystem=fs, columns=["uid"], include_paths=True, num_cpus=n)
        partial = keys.map_batches(_split_counts, fn_kwargs={"fraction": fraction}, batch_format="pyarrow",
                                   num_cpus=n)
        table = pa.Table.from_pylist(partial.groupby("path").sum("records").take_all())  # a row per unit
        sink = pa.BufferOutputStream()
        pq.write_table(table, sink)
        storage.write_bytes(cache, sink.getvalue().to_pybytes())
    per_path = dict(zip(table.column("path").to_pylist(), table.column("sum(records)").to_pylist()))
    return units, [int(per_path.get(u, 0)) for u in units]


def plan(counts: list[int], seed: int, epochs: int, skip_records: int) -> tuple[list[int], int]:
    """Unit indices to read, epoch after epoch, without the units wholly before ``skip_records``;
    returns them and the number of records dropped with them."""
    order: list[int] = []
    position = skipped = 0  # records before the current unit, in plan order
    for epoch in range(epochs):
        for unit in epoch_permutation(len(counts), seed, epoch).tolist():
            if position + counts[unit] <= skip_records:
                skipped += counts[unit]
            else:
                order.append(unit)
            position += counts[unit]
    return order, skipped
