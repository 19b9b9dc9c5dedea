"""A set of uids that Ray tasks test rows against, built and held in the cluster.

Resuming a stage means skipping the uids its finished outputs already hold. At 10M records a
Python set of uids costs gigabytes on the driver and again in every task it is shipped to.
Here each uid becomes a 128-bit hash (two uint64 columns, 16 bytes), sorted by a Ray task from
blocks that never pass through the driver, and stored once in the object store. Tasks read it
zero-copy from their node's shared memory and test a batch with two binary searches; the driver
holds only an ObjectRef. (A collision of two different uids over all 128 bits is about 1e-24
likely at 10M uids.)
"""

from __future__ import annotations

import hashlib

import numpy as np
import pyarrow as pa

from biocap_ray import storage


def uid_hashes(uids: list[str]) -> np.ndarray:
    """A (2, n) uint64 array: the high and low halves of each uid's 128-bit BLAKE2b digest."""
    raw = b"".join(hashlib.blake2b(u.encode(), digest_size=16).digest() for u in uids)
    return np.frombuffer(raw, dtype=">u8").reshape(-1, 2).T.astype(np.uint64) if uids else np.zeros((2, 0), np.uint64)


def _hash_batch(batch: pa.Table) -> dict:
    hashed = uid_hashes(batch.column("uid").to_pylist())
    return {"hi": hashed[0], "lo": hashed[1]}


def _sorted_set(*blocks: pa.Table) -> tuple[np.ndarray, int]:
    """One (2, n) array sorted by (hi, lo) from the hashed blocks, and n (runs as a Ray task)."""
    table = pa.concat_tables(blocks) if blocks else pa.table({"hi": pa.array([], pa.uint64()),
                                                              "lo": pa.array([], pa.uint64())})
    hi, lo = table.column("hi").to_numpy(), table.column("lo").to_numpy()
    order = np.lexsort((lo, hi))
    return np.stack([hi[order], lo[order]]), len(order)


def build(parquet_uris: list[str], num_cpus: float = 0.25):
    """The uids in the ``uid`` column of these Parquet files as ``(ObjectRef, count)``, or
    ``(None, 0)`` when there are none. Only the uid column is read, by Ray Data tasks."""
    import ray

    if not parquet_uris:
        return None, 0
    fs, _ = storage.resolve(parquet_uris[0])
    paths = [storage.resolve(u)[1] for u in parquet_uris]
    hashed = ray.data.read_parquet(paths, filesystem=fs, columns=["uid"], num_cpus=num_cpus).map_batches(
        _hash_batch, batch_format="pyarrow", num_cpus=num_cpus)
    blocks = hashed.to_arrow_refs()  # refs only: the blocks stay in the object store
    ref, count = ray.remote(num_cpus=num_cpus, num_returns=2)(_sorted_set).remote(*blocks)
    count = ray.get(count)
    return (ref, count) if count else (None, 0)


def contains(uid_set: np.ndarray, uids: list[str]) -> np.ndarray:
    """A boolean mask: which of ``uids`` are in the set."""
    hi, lo = uid_set
    query = uid_hashes(uids)
    left = np.searchsorted(hi, query[0], side="left")
    right = np.searchsorted(hi, query[0], side="right")
    single = right - left == 1
    found = np.zeros(len(uids), dtype=bool)
    found[single] = lo[left[single]] == query[1][single]
    for i in np.flatnonzero(right - left > 1):  # two uids share the high 64 bits: vanishingly rare
        found[i] = bool(np.any(lo[left[i]:right[i]] == query[1][i]))
    return found


def drop_members(batch: pa.Table, uid_set: list) -> pa.Table:
    """The rows of ``batch`` whose uid is not in the set (``[ObjectRef]``: fetched, not shipped)."""
    import ray

    members = ray.get(uid_set[0]) if uid_set else None
    if members is None or batch.num_rows == 0:
        return batch
    return batch.filter(pa.array(~contains(members, batch.column("uid").to_pylist()), pa.bool_()))
