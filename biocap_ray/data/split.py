"""The held-out split: which uids a training run keeps back for validation and evaluation.

A pure function of the uid, so the split is the same on every run, worker and resume, and
training, validation and evaluation agree on it without sharing any state.
"""

from __future__ import annotations

import hashlib

import pyarrow as pa


def is_held_out(uid: str, fraction: float) -> bool:
    """Whether a uid belongs to the held-out split."""
    return int.from_bytes(hashlib.sha1(uid.encode()).digest()[:4], "little") < fraction * 2**32


def split_rows(batch: pa.Table, fraction: float, held_out: bool) -> pa.Table:
    keep = [is_held_out(uid, fraction) == held_out for uid in batch.column("uid").to_pylist()]
    return batch.filter(pa.array(keep, pa.bool_()))


def keep_split(ds, fraction: float, held_out: bool, num_cpus: float):
    """The rows of ``ds`` in (``held_out``) or out of the held-out split. A batch function, not a
    row filter, so that Ray Data fuses it with the maps around it into one operator."""
    return ds.map_batches(split_rows, fn_kwargs={"fraction": fraction, "held_out": held_out},
                          batch_format="pyarrow", num_cpus=num_cpus)
