"""The hashed uid set a resumed stage skips against: built by Ray tasks from Parquet parts,
held in the object store, exact membership (also when two uids share the high 64 bits)."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from biocap_ray.data import uid_set

pytestmark = pytest.mark.usefixtures("ray_local")


def test_built_from_parts_in_the_cluster_and_exact(tmp_path):
    import ray

    members = [f"uid-{i:05d}" for i in range(0, 3000, 3)]
    parts = []
    for k in range(4):
        path = tmp_path / f"part-{k}.parquet"
        pq.write_table(pa.table({"uid": members[k::4], "caption": ["x"] * len(members[k::4])}), path)
        parts.append(str(path))
    ref, count = uid_set.build(parts)
    assert count == len(members) and isinstance(ref, ray.ObjectRef)
    table = ray.get(ref)
    assert table.shape == (2, len(members)) and np.all(np.diff(table[0].astype(np.float64)) >= 0)  # sorted by hi

    batch = pa.table({"uid": [f"uid-{i:05d}" for i in range(3000)], "n": list(range(3000))})
    kept = uid_set.drop_members(batch, [ref])
    assert kept.column("uid").to_pylist() == [f"uid-{i:05d}" for i in range(3000) if i % 3]
    assert uid_set.build([]) == (None, 0) and uid_set.drop_members(batch, []) is batch


def test_uids_sharing_the_high_half_are_told_apart_by_the_low_half():
    a, b = uid_set.uid_hashes(["a", "b"]).T
    forged = np.array([[a[0], a[0], b[0]], [a[1], b[1], b[1]]], dtype=np.uint64)  # "a" and a twin with b's low half
    order = np.lexsort((forged[1], forged[0]))
    members = forged[:, order]
    assert uid_set.contains(members, ["a", "b", "c"]).tolist() == [True, True, False]
    only_twin = members[:, members[1] != a[1]]  # the twin shares a's high half but not its low half
    assert uid_set.contains(only_twin, ["a"]).tolist() == [False]
